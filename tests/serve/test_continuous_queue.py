"""``synpro serve``'s continuous batching: requests join the running decode, each answered as its own rows end,
with the completions each would get alone."""

from __future__ import annotations

import time

import jax
import pytest

from synpro_jax import models
from synpro_jax.generation.continuous import ContinuousBatcher
from synpro_jax.generation.sampler import Sampler
from synpro_jax.serve.batching import ContinuousQueue, GenRequest, Knobs

CFG = models.get_preset("tiny")
STOP = [5, 7, 11]


@pytest.fixture(scope="module")
def sampler():
    params = jax.tree.map(lambda x: 3 * x if x.ndim >= 2 else x, models.init_params(CFG, jax.random.key(0)))
    return Sampler(CFG, params)


def alone(sampler, request: GenRequest):
    k = request.knobs
    out = sampler.generate(
        request.prompts,
        max_new_tokens=request.budgets,
        temperature=k.temperature,
        top_k=k.top_k,
        top_p=k.top_p,
        seed=k.seed,
        eos_id=STOP,
        stream_ids=request.stream_ids,
    )
    rows = []
    for ids, fin in zip(out.completions(), out.finished):
        rows.append((ids[:-1] if fin else ids, bool(fin), len(ids)))
    return rows


def make_queue(sampler, slots=4, **kw):
    return ContinuousQueue(
        lambda: ContinuousBatcher(sampler, slots=slots, max_prompt_tokens=16, max_new_tokens=48, eos_id=STOP),
        max_rows=slots,
        batch_wait_s=0.0,
        **kw,
    )


def test_requests_with_different_knobs_join_the_running_decode(sampler):
    q = make_queue(sampler)
    long = GenRequest([[20, 21, 22]], [48], [0], Knobs())
    first = q.submit(long)
    time.sleep(0.05)  # the long request is decoding when the others arrive
    later = [
        GenRequest([[30, 31], [32]], [6, 9], [0, 1], Knobs(temperature=1.0, seed=3)),
        GenRequest([[40] * 12], [12], [0], Knobs(temperature=0.8, top_k=5, seed=1)),
        GenRequest([[50, 51, 52, 53]], [3], [7], Knobs(temperature=1.2, top_p=0.6)),
    ]
    futures = [q.submit(r) for r in later]
    results = [f.result(60) for f in [first, *futures]]
    q.close()
    for request, rows in zip([long, *later], results):
        assert [(r.tokens, r.finished, r.generated) for r in rows] == alone(sampler, request)
    assert sum(req for req, _ in q.batches) == 4 and q.stats["rows"] == 5
    assert q.stats["device_calls"] >= 2


def test_a_request_the_slots_cannot_take_fails_alone(sampler):
    q = make_queue(sampler, slots=2)
    with pytest.raises(ValueError, match="max_rows=2"):
        q.submit(GenRequest([[1]] * 3, [1] * 3, [0, 1, 2], Knobs()))
    with pytest.raises(ValueError, match="max_new_tokens=49 must be in"):
        q.submit(GenRequest([[20]], [49], [0], Knobs()))
    assert q.submit(GenRequest([[20]], [4], [0], Knobs())).result(60)[0].generated >= 1
    q.close()


def test_a_failed_chunk_answers_every_request_in_flight_and_the_queue_goes_on(sampler):
    built = []

    def make():
        batcher = ContinuousBatcher(sampler, slots=2, max_prompt_tokens=16, max_new_tokens=48, eos_id=STOP)
        if not built:  # the first batcher loses its device on the first chunk

            def broken():
                raise RuntimeError("device lost")

            batcher.step = broken
        built.append(batcher)
        return batcher

    q = ContinuousQueue(make, max_rows=2, batch_wait_s=0.05)
    doomed = [q.submit(GenRequest([[20 + i]], [8], [0], Knobs())) for i in range(2)]
    for f in doomed:
        with pytest.raises(RuntimeError, match="device lost"):
            f.result(60)
    request = GenRequest([[20, 21]], [8], [0], Knobs())
    assert [(r.tokens, r.finished, r.generated) for r in q.submit(request).result(60)] == alone(sampler, request)
    assert len(built) == 2  # a fresh batcher after the failure
    q.close()


def test_close_answers_what_is_in_flight(sampler):
    q = make_queue(sampler, slots=2)
    f = q.submit(GenRequest([[20]], [48], [0], Knobs()))
    time.sleep(0.05)
    q.close()  # joins the device thread, which answers its rows in flight before it ends
    assert f.done()
