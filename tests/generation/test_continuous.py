"""Continuous batching against the static sampler (itself pinned to HF generate): the same tokens and log-probs
row by row, whatever the slots, refills, groups, knobs or mesh."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from synpro_jax import models
from synpro_jax.generation import sampler as sampler_lib
from synpro_jax.generation.continuous import ContinuousBatcher, Request, generate_ordered, rollout, window
from synpro_jax.generation.sampler import Sampler
from synpro_jax.sharding import MeshConfig, make_mesh

CFG = models.get_preset("tiny")
EOS = [5, 7, 11]


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(lambda x: 3 * x if x.ndim >= 2 else x, models.init_params(CFG, jax.random.key(0)))


@pytest.fixture(scope="module")
def sampler(params):
    return Sampler(CFG, params)


def workload(n=13, seed=0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(12, CFG.vocab_size, size=rng.integers(1, 17)).tolist() for _ in range(n)]
    budgets = [int(b) for b in rng.integers(1, 30, size=n)]
    return prompts, budgets


def assert_same(completions, ref, rows):
    for got, i in zip(completions, rows):
        n = int(ref.lengths[i])
        assert got.tokens == ref.tokens[i, :n].tolist(), i
        np.testing.assert_allclose(got.logprobs, ref.logprobs[i, :n], atol=1e-5)
        assert got.finished == bool(ref.finished[i])


@pytest.mark.parametrize("knobs", [dict(temperature=0.0), dict(temperature=1.0, top_k=20, top_p=0.9, seed=3)])
def test_refilled_slots_give_the_static_samplers_completions(sampler, knobs):
    prompts, budgets = workload()
    ref = sampler.generate(prompts, max_new_tokens=budgets, eos_id=EOS, **knobs)
    assert len(set(ref.lengths.tolist())) > 4 and ref.finished.any()  # rows end at varying lengths
    batcher = ContinuousBatcher(sampler, slots=4, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS, chunk_steps=8)
    requests = [Request(p, b, stream_id=i, **knobs) for i, (p, b) in enumerate(zip(prompts, budgets))]
    out = generate_ordered(batcher, requests)
    assert_same([c for (c,) in out], ref, range(len(prompts)))
    assert batcher.stats["admitted"] == len(prompts) and batcher.stats["admissions"] > 1  # slots were refilled
    assert batcher.stats["generated_tokens"] == int(ref.lengths.sum())
    assert 0.5 < batcher.occupancy() <= 1.0


def test_groups_share_one_prompt_like_num_generations(sampler):
    prompts, budgets = workload(6, seed=1)
    ref = sampler.generate(prompts, max_new_tokens=budgets, eos_id=EOS, temperature=1.0, seed=1, num_generations=3)
    batcher = ContinuousBatcher(sampler, slots=6, group=3, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS)
    out = generate_ordered(
        batcher, [Request(p, b, stream_id=i, temperature=1.0, seed=1) for i, (p, b) in enumerate(zip(prompts, budgets))]
    )
    assert_same([c for group in out for c in group], ref, range(18))


def test_rows_with_different_knobs_share_a_batch(sampler):
    """Each row keeps its own knobs and stream: a batch of mixed requests equals each request run alone."""
    prompts, budgets = workload(8, seed=2)
    kinds = [
        dict(temperature=0.0),
        dict(temperature=0.7, seed=5),
        dict(temperature=1.0, top_k=3, seed=9),
        dict(temperature=1.3, top_p=0.5),
    ]
    requests = [Request(p, b, stream_id=10 + i, **kinds[i % 4]) for i, (p, b) in enumerate(zip(prompts, budgets))]
    batcher = ContinuousBatcher(sampler, slots=4, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS)
    out = generate_ordered(batcher, requests)
    for i, ((got,), req) in enumerate(zip(out, requests)):
        ref = sampler.generate(
            [req.prompt], max_new_tokens=req.max_new_tokens, eos_id=EOS, stream_ids=[req.stream_id], **kinds[i % 4]
        )
        assert_same([got], ref, [0])


def test_streams_through_without_recompiling(sampler, params):
    """New prompts, refills and new weights reuse the compiled programs once their windows have been seen."""
    prompts, budgets = workload(10, seed=3)
    requests = [Request(p, b, stream_id=i) for i, (p, b) in enumerate(zip(prompts, budgets))]
    batcher = ContinuousBatcher(sampler, slots=4, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS)
    first = generate_ordered(batcher, requests)
    traces = dict(sampler_lib.TRACE_COUNTS)
    again = generate_ordered(batcher, requests)
    assert [c.tokens for (c,) in again] == [c.tokens for (c,) in first]
    sampler.update_params(jax.tree.map(lambda x: x * 1.01, params))
    generate_ordered(batcher, requests)
    sampler.update_params(params)
    assert dict(sampler_lib.TRACE_COUNTS) == traces


def test_runs_sharded_on_an_8_device_mesh(params):
    mesh = make_mesh(MeshConfig(data=8))
    sharded = Sampler(CFG, params, mesh=mesh)
    prompts, budgets = workload(20, seed=4)
    ref = Sampler(CFG, params).generate(prompts, max_new_tokens=budgets, eos_id=EOS)
    batcher = ContinuousBatcher(sharded, slots=8, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS)
    out = generate_ordered(batcher, [Request(p, b, stream_id=i) for i, (p, b) in enumerate(zip(prompts, budgets))])
    assert [c.tokens for (c,) in out] == ref.completions()


def test_run_yields_each_request_once_as_it_ends(sampler):
    prompts, budgets = workload(9, seed=5)
    batcher = ContinuousBatcher(sampler, slots=4, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS)
    pulled = []

    def source():
        for i, (p, b) in enumerate(zip(prompts, budgets)):
            pulled.append(i)
            yield f"doc{i}", Request(p, b, stream_id=i)

    seen = []
    for key, _ in batcher.run(source()):
        seen.append(key)
        assert len(pulled) <= len(seen) + 4 + batcher.refill_min  # the source is read lazily
    assert sorted(seen) == sorted(f"doc{i}" for i in range(9)) and not batcher.busy()


def test_bad_requests_fail_alone_and_name_the_limit(sampler):
    batcher = ContinuousBatcher(sampler, slots=2, max_prompt_tokens=16, max_new_tokens=8)
    with pytest.raises(ValueError, match="max_prompt_tokens=16"):
        batcher.add(0, Request(list(range(12, 30)), 4))
    with pytest.raises(ValueError, match=r"max_new_tokens=9 must be in \[1, 8\]"):
        batcher.add(0, Request([12], 9))
    with pytest.raises(ValueError, match="empty prompt"):
        batcher.add(0, Request([], 4))
    with pytest.raises(ValueError, match="outside"):
        batcher.add(0, Request([CFG.vocab_size], 4))
    with pytest.raises(ValueError, match="top_p"):
        batcher.add(0, Request([12], 4, temperature=1.0, top_p=0.0))
    assert not batcher.busy()
    with pytest.raises(ValueError, match="max_seq_len"):
        ContinuousBatcher(sampler, slots=2, max_prompt_tokens=512, max_new_tokens=100)
    wide = ContinuousBatcher(sampler, slots=2, max_prompt_tokens=500, max_new_tokens=100)
    with pytest.raises(ValueError, match="a prompt of 450 tokens with max_new_tokens=100 exceeds"):
        wide.add(0, Request([12] * 450, 100))
    with pytest.raises(ValueError, match="multiple of group"):
        ContinuousBatcher(sampler, slots=3, group=2, max_prompt_tokens=16, max_new_tokens=8)


def test_windows_are_powers_of_two_then_multiples_of_128():
    assert [window(n, 4096) for n in (1, 16, 17, 100, 128, 129, 700, 768, 769)] == [
        16, 16, 32, 128, 128, 256, 768, 768, 896,
    ]  # fmt: skip
    assert window(3000, 1024) == 1024


@pytest.mark.parametrize("slots", [6, 18])
def test_rollout_is_the_samplers_rollout(sampler, slots):
    """GRPO's rollouts through groups of slots (refilled when fewer than the rows) give Sampler.rollout's batch."""
    prompts, budgets = workload(6, seed=6)
    kw = dict(max_new_tokens=budgets, temperature=1.0, top_p=0.9, seed=4)
    ref = sampler.rollout(prompts, num_generations=3, eos_id=EOS, **kw)
    batcher = ContinuousBatcher(sampler, slots=slots, group=3, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS)
    got = rollout(batcher, prompts, **kw)
    for name in ("tokens", "positions", "segment_ids", "completion_mask", "lengths", "finished"):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(ref, name)), err_msg=name)
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(ref.logprobs), atol=1e-5)
    refilled = batcher.stats["admissions"] > 1
    assert refilled == (slots < 18)  # 6 prompts x 3 rows fit 18 slots at once; 6 slots are refilled


def test_reset_after_an_interrupted_run_starts_from_empty_slots(sampler):
    prompts, budgets = workload(8, seed=7)
    requests = [Request(p, b, stream_id=i) for i, (p, b) in enumerate(zip(prompts, budgets))]
    batcher = ContinuousBatcher(sampler, slots=4, max_prompt_tokens=16, max_new_tokens=32, eos_id=EOS)
    for i, r in enumerate(requests):
        batcher.add(("old", i), r)
    batcher.step()  # interrupted here: rows live, requests waiting
    assert batcher.busy()
    batcher.reset()
    assert not batcher.busy()
    out = generate_ordered(batcher, requests)
    ref = sampler.generate(prompts, max_new_tokens=budgets, eos_id=EOS)
    assert [c.tokens for (c,) in out] == ref.completions()
