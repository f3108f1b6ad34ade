"""The cached sampler against full recomputes, HF transformers' generate, and its own contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.generation import Sampler, sample
from synpro_jax.generation import sampler as sampler_lib

RAGGED = [[5, 6, 7], list(range(1, 21)), [42], [9, 8, 7, 6, 5, 4], [100, 3], list(range(30, 41))]


@pytest.fixture(scope="module")
def tiny():
    cfg = models.get_preset("tiny")
    return cfg, models.init_params(cfg, jax.random.key(0))


def recompute_check(cfg, params, prompts, out, atol=1e-4):
    """Teacher-forced full forward over prompt + completion: at every generated slot the completion token must be
    the argmax of the recomputed logits, and its log-prob must match."""
    seqs = [p + c for p, c in zip(prompts, out.completions())]
    width = max(map(len, seqs))
    tokens = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    logp = np.asarray(jax.nn.log_softmax(models.forward(cfg, params, jnp.asarray(tokens)), axis=-1))
    for i, (prompt, completion) in enumerate(zip(prompts, out.completions())):
        at = np.arange(len(prompt) - 1, len(prompt) - 1 + len(completion))
        step_logp = logp[i, at]
        np.testing.assert_array_equal(step_logp.argmax(-1), completion, err_msg=f"prompt {i}")
        np.testing.assert_allclose(
            out.logprobs[i, : len(completion)],
            step_logp[np.arange(len(at)), completion],
            atol=atol,
            rtol=0,
            err_msg=f"prompt {i}",
        )


@pytest.mark.parametrize(
    "mesh_shape",  # the fast tier: one device and (2,2,2), every axis sharded
    [
        (1, 1, 1),
        pytest.param((8, 1, 1), marks=pytest.mark.slow),
        (2, 2, 2),
        pytest.param((1, 2, 4), marks=pytest.mark.slow),
    ],
)
def test_greedy_equals_full_recompute_on_meshes(tiny, mesh_shape):
    cfg, params = tiny
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape), devices=devices)
    out = sample(cfg, params, RAGGED, max_new_tokens=10, mesh=mesh)
    assert out.tokens.shape == (len(RAGGED), 10) and (out.lengths == 10).all()
    recompute_check(cfg, params, RAGGED, out)


def test_sampler_weights_follow_sampling_rules(tiny):
    cfg, params = tiny
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    s = Sampler(cfg, params, mesh=mesh)
    specs = sharding.describe(jax.tree.map(lambda x: x.sharding, s.params))
    assert "fsdp" not in "".join(specs.values())  # no fsdp gathers in the loop
    # Weights are split per layer once, so the decode loop never slices a stacked weight.
    assert len(s.params["layers"]) == cfg.num_layers
    assert specs["['layers'][1]['mlp']['gate_proj']['kernel']"] == str(jax.sharding.PartitionSpec(None, "tensor"))
    assert s.batch_shards == 4


def test_eos_stops_rows_pads_and_masks(tiny):
    cfg, params = tiny
    free = sample(cfg, params, RAGGED, max_new_tokens=8)
    row0 = free.tokens[0].tolist()
    first = next(j for j in range(1, 8) if row0[j] not in row0[:j])
    eos = (row0[first], 255)  # row 0 first emits it at step `first`; other rows stop wherever one first appears
    out = sample(cfg, params, RAGGED, max_new_tokens=8, eos_id=eos, pad_id=0)
    for i, row in enumerate(free.tokens.tolist()):
        hits = [j for j, tok in enumerate(row) if tok in eos]
        stop = hits[0] + 1 if hits else len(row)
        assert out.lengths[i] == stop
        assert out.finished[i] == bool(hits)
        assert out.tokens[i, :stop].tolist() == row[:stop]
        assert (out.tokens[i, stop:] == 0).all() and (out.logprobs[i, stop:] == 0).all()
        np.testing.assert_allclose(out.logprobs[i, :stop], free.logprobs[i, :stop], atol=1e-5)
    assert out.lengths[0] == first + 1 and out.finished[0]
    assert out.mask().sum() == out.lengths.sum()


def test_per_prompt_budgets(tiny):
    cfg, params = tiny
    out = sample(cfg, params, RAGGED[:3], max_new_tokens=[2, 7, 5])
    assert out.lengths.tolist() == [2, 7, 5] and out.tokens.shape == (3, 7)
    assert not out.finished.any() and (out.tokens[0, 2:] == 0).all()
    recompute_check(cfg, params, RAGGED[:3], out)


def test_same_bucket_does_not_recompile(tiny):
    cfg, params = tiny
    s = Sampler(cfg, params)
    s.generate(RAGGED[:3], max_new_tokens=9, seed=1)
    before = dict(sampler_lib.TRACE_COUNTS)
    # Other prompts, lengths, budgets and knobs in the same (rows 4, prompt 32, new 16) bucket.
    s.generate(
        [[1, 2], list(range(25)), [7] * 9, [4]],
        max_new_tokens=[16, 3, 12, 1],
        temperature=0.8,
        top_k=20,
        top_p=0.9,
        seed=5,
        eos_id=[3, 7],
    )
    # A new Sampler for the same weights and shapes reuses the compiles too.
    Sampler(cfg, params).generate([[8, 9, 10], [1] * 17, [2]], max_new_tokens=11, temperature=1.0)
    assert dict(sampler_lib.TRACE_COUNTS) == before
    s.generate([[1, 2]] * 5, max_new_tokens=9)  # 8 rows: a new bucket, one new trace of each
    assert sampler_lib.TRACE_COUNTS["decode"] == before["decode"] + 1


def test_sampling_is_deterministic_by_seed_and_independent_of_the_batch(tiny):
    cfg, params = tiny
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.95)
    a = sample(cfg, params, RAGGED[:2], seed=11, **kw)
    b = sample(cfg, params, RAGGED[:2], seed=11, **kw)
    c = sample(cfg, params, RAGGED[:2], seed=12, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).any()
    # Row 1 alone, with its stream id, in a different batch and prompt bucket, draws the same tokens.
    alone = sample(cfg, params, [RAGGED[1]], seed=11, stream_ids=[1], **kw)
    np.testing.assert_array_equal(alone.tokens[0], a.tokens[1])
    np.testing.assert_allclose(alone.logprobs[0], a.logprobs[1], atol=1e-5)


def test_sampled_logprobs_are_under_the_temperature(tiny):
    cfg, params = tiny
    out = sample(cfg, params, RAGGED[:3], max_new_tokens=6, temperature=0.7, top_k=40, seed=2)
    seqs = [p + c for p, c in zip(RAGGED[:3], out.completions())]
    for i, s in enumerate(seqs):
        logits = models.forward(cfg, params, jnp.asarray([s]))[0]
        logp = np.asarray(jax.nn.log_softmax(logits / 0.7, axis=-1))
        at = np.arange(len(RAGGED[i]) - 1, len(s) - 1)
        np.testing.assert_allclose(out.logprobs[i], logp[at, s[len(RAGGED[i]) :]], atol=1e-4)


def test_bad_requests_name_the_knob(tiny):
    cfg, params = tiny
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sample(cfg, params, [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="token id 256 outside the vocabulary"):
        sample(cfg, params, [[1, 256]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_seq_len=512"):
        sample(cfg, params, [[1] * 500], max_new_tokens=20)
    with pytest.raises(ValueError, match="top_p"):
        sample(cfg, params, [[1]], max_new_tokens=2, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(cfg, params, [[1]], max_new_tokens=2, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        sample(cfg, params, [[1]], max_new_tokens=0)


def test_bucket_sizes():
    assert [sampler_lib.bucket(n, 16) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert sampler_lib.bucket(3, 1, 8) == 8 and sampler_lib.bucket(9, 1, 4) == 16 and sampler_lib.bucket(3, 1, 6) == 6


def test_greedy_matches_transformers_generate(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_peer import hf_greedy, make_hf_model

    from synpro_jax.models import hf

    model = make_hf_model(
        7,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=96,
    )
    model.save_pretrained(tmp_path / "hf")
    cfg, params = hf.load(tmp_path / "hf")
    prompts = [[5, 9, 11], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [50], [20, 21, 22, 23, 24]]
    hf_tokens, hf_logp = hf_greedy(model, prompts, 16)  # left padding, as the sampler lays prompts out
    out = sample(cfg, params, prompts, max_new_tokens=16)
    np.testing.assert_array_equal(out.tokens, hf_tokens)
    np.testing.assert_allclose(out.logprobs, hf_logp, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cache_dtype", ["float32", "bfloat16"])
def test_bf16_sampler_logprobs_track_fp32(tiny, cache_dtype):
    """bf16 weights and compute, with either cache dtype: log-probs stay near an fp32 teacher-forced recompute."""
    cfg, params = tiny
    s = Sampler(cfg.replace(dtype="bfloat16"), params, cache_dtype=cache_dtype)
    assert s.cache_dtype == cache_dtype
    out = s.generate(RAGGED[:3], max_new_tokens=6)
    assert np.isfinite(out.logprobs).all() and (out.lengths == 6).all()
    for i, (prompt, completion) in enumerate(zip(RAGGED[:3], out.completions())):
        logp = jax.nn.log_softmax(models.forward(cfg, params, jnp.asarray([prompt + completion]))[0], axis=-1)
        at = np.arange(len(prompt) - 1, len(prompt) + 5)
        np.testing.assert_allclose(out.logprobs[i], np.asarray(logp)[at, completion], atol=0.05)


def test_cpu_default_cache_is_float32(tiny):
    cfg, params = tiny
    assert Sampler(cfg.replace(dtype="bfloat16"), params).cache_dtype == "float32"
