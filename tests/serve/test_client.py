"""Fast unit tests: the client's retries and breaker over an httpx mock transport, fault specs, and the batching
queue's grouping over a recording fake sampler."""

import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from synpro_jax.serve import CircuitBreaker, CircuitOpenError, ClientConfig, OpenAIClient, RemoteError
from synpro_jax.serve.batching import GenerationQueue, GenRequest, Knobs
from synpro_jax.serve.server import Fault, FaultInjector, parse_faults


def mock_client(handler, **kw):
    cfg = ClientConfig(base_url="http://judge.test/v1", model="m", backoff_s=0.0, **kw)
    return OpenAIClient(cfg, transport=httpx.MockTransport(handler))


def ok_reply(n=1):
    return {"choices": [{"index": i, "text": f"t{i}"} for i in range(n)]}


def test_retries_5xx_and_timeouts_then_succeeds():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(502, text="bad gateway")
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json=ok_reply(2))

    c = mock_client(handler, max_retries=3)
    assert c.completions(["a", "b"], max_tokens=3) == ["t0", "t1"]
    assert c.stats["retries"] == 2 and len(calls) == 3
    assert calls[-1].headers["authorization"] == "Bearer EMPTY"


def test_4xx_is_not_retried_and_names_the_status():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(400, json={"error": {"message": "max_tokens=0"}})

    with pytest.raises(RemoteError, match="HTTP 400.*max_tokens"):
        mock_client(handler).completions(["a"])
    assert len(calls) == 1


def test_wrong_choice_count_is_a_malformed_reply():
    c = mock_client(lambda r: httpx.Response(200, json=ok_reply(1)), max_retries=1)
    with pytest.raises(RemoteError, match="2 attempts.*expected 2 choices"):
        c.completions(["a", "b"])


def test_breaker_opens_after_n_failures_and_half_opens_after_the_cooldown():
    now = [0.0]
    b = CircuitBreaker(failures=3, cooldown_s=10.0, clock=lambda: now[0])
    for _ in range(2):
        b.before_call()
        b.record(False)
    assert b.state == "closed"
    b.before_call()
    b.record(False)
    assert b.state == "open"
    with pytest.raises(CircuitOpenError, match="3 consecutive"):
        b.before_call()
    now[0] = 10.0
    b.before_call()  # the half-open trial
    with pytest.raises(CircuitOpenError):
        b.before_call()  # only one trial at a time
    b.record(False)  # the trial failed: open for another cooldown
    assert b.state == "open"
    now[0] = 20.0
    b.before_call()
    b.record(True)
    assert b.state == "closed" and b.consecutive == 0


def test_client_config_names_bad_knobs():
    with pytest.raises(ValueError, match="base_url"):
        ClientConfig(base_url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="timeout_s"):
        ClientConfig(base_url="http://x/v1", timeout_s=0)
    with pytest.raises(ValueError, match="breaker_failures"):
        ClientConfig(base_url="http://x/v1", breaker_failures=0)


def test_fault_spec_parsing():
    assert [(f.kind, f.count, f.delay_s) for f in parse_faults("slow:2:1.5, 5xx:1")] == [("slow", 2, 1.5),
                                                                                          ("5xx", 1, 1.0)]
    with pytest.raises(ValueError, match="SYNPRO_SERVE_FAULTS entry 'boom:1'"):
        parse_faults("boom:1")
    inj = FaultInjector([Fault("drop", 2), Fault("5xx", 1)])
    assert [inj.take().kind, inj.take().kind, inj.take().kind, inj.take()] == ["drop", "drop", "5xx", None]


class RecordingSampler:
    """Answers each row with [stream_id, budget, eos]; blocks the first call until released."""

    def __init__(self):
        self.calls, self.release = [], threading.Event()

    def generate(self, prompts, *, max_new_tokens, temperature, top_k, top_p, seed, eos_id, pad_id, stream_ids):
        self.release.wait(10)
        self.calls.append((len(prompts), temperature, seed))
        rows = [[s, b, eos_id[0]] for s, b in zip(stream_ids, max_new_tokens)]
        return SimpleNamespace(tokens=np.array(rows), lengths=np.full(len(rows), 3), finished=np.ones(len(rows), bool))


def test_queue_batches_requests_with_equal_knobs_and_keeps_each_rows_stream():
    sampler = RecordingSampler()
    q = GenerationQueue(sampler, stop_ids=[9], max_rows=8, batch_wait_s=0.0)
    greedy, hot = Knobs(), Knobs(temperature=1.0, seed=3)
    first = q.submit(GenRequest([[1]], [4], [0], greedy))
    time.sleep(0.2)  # the device thread holds `first` and blocks in generate
    later = [q.submit(GenRequest([[1], [2]], [5, 6], [0, 1], greedy)),
             q.submit(GenRequest([[3]], [7], [0], hot)),
             q.submit(GenRequest([[1]], [8], [0], greedy))]
    sampler.release.set()
    results = [f.result(10) for f in [first, *later]]
    q.close()
    assert sampler.calls == [(1, 0.0, 0), (3, 0.0, 0), (1, 1.0, 3)]  # the greedy ones together, the hot one alone
    assert list(q.batches) == [(1, 1), (2, 3), (1, 1)]
    assert [[r.tokens for r in res] for res in results] == [[[0, 4]], [[0, 5], [1, 6]], [[0, 7]], [[0, 8]]]
    assert all(r.finished for res in results for r in res)  # the stop id is dropped from the text


def test_queue_refuses_a_request_larger_than_max_rows():
    q = GenerationQueue(RecordingSampler(), stop_ids=[9], max_rows=2)
    with pytest.raises(ValueError, match="max_rows=2"):
        q.submit(GenRequest([[1]] * 3, [1] * 3, [0, 1, 2], Knobs()))
    q.close()


def test_a_failed_device_call_answers_its_requests_and_the_queue_goes_on():
    class Flaky(RecordingSampler):
        def generate(self, prompts, **kw):
            if not self.calls:
                self.calls.append("boom")
                raise RuntimeError("device lost")
            return super().generate(prompts, **kw)

    sampler = Flaky()
    sampler.release.set()
    q = GenerationQueue(sampler, stop_ids=[9], batch_wait_s=0.0)
    with pytest.raises(RuntimeError, match="device lost"):
        q.submit(GenRequest([[1]], [2], [0], Knobs())).result(10)
    assert q.submit(GenRequest([[1]], [2], [0], Knobs())).result(10)[0].tokens == [0, 2]
    q.close()
