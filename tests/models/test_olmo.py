"""The decoder's own behaviour: losses against NumPy, causality, packed segments, dtypes, presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models
from synpro_jax.models import ModelConfig


@pytest.fixture(scope="module")
def tiny():
    cfg = models.get_preset("tiny")
    return cfg, models.init_params(cfg, jax.random.key(0))


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 7))
    mask = (rng.random((3, 7)) > 0.3).astype(np.float32)
    mask[2] = 0  # a row with nothing to score
    nll = -np.take_along_axis(np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
    m = logits.astype(np.float64).max(-1)
    lse = m + np.log(np.exp(logits - m[..., None]).sum(-1))

    sums = models.loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(float(sums.nll), (nll * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums.z), (lse**2 * mask).sum(), rtol=1e-5)
    assert float(sums.tokens) == mask.sum()
    expected = ((nll * mask).sum() + 1e-4 * (lse**2 * mask).sum()) / mask.sum()
    np.testing.assert_allclose(float(sums.loss(1e-4)), expected, rtol=1e-5)

    per_ex = np.asarray(models.per_example_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)))
    want = np.array([(nll[i] * mask[i]).sum() / max(mask[i].sum(), 1) for i in range(3)])
    np.testing.assert_allclose(per_ex, want, atol=1e-5)
    assert per_ex[2] == 0.0


def test_no_mask_means_every_token():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 7)), jnp.float32)
    targets = jnp.zeros((2, 5), jnp.int32)
    a = models.loss_sums(logits, targets)
    b = models.loss_sums(logits, targets, jnp.ones((2, 5)))
    assert float(a.tokens) == 10 and float(a.nll) == pytest.approx(float(b.nll))


def test_logits_are_causal(tiny):
    cfg, params = tiny
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 12))
    changed = tokens.copy()
    changed[:, 7:] = (changed[:, 7:] + 1) % cfg.vocab_size
    a = models.forward(cfg, params, jnp.asarray(tokens))
    b = models.forward(cfg, params, jnp.asarray(changed))
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-3
    assert a.dtype == jnp.float32 and a.shape == (2, 12, cfg.vocab_size)


def test_packed_segments_equal_separate_documents(tiny):
    cfg, params = tiny
    rng = np.random.default_rng(2)
    doc_a, doc_b = rng.integers(0, cfg.vocab_size, 5), rng.integers(0, cfg.vocab_size, 9)
    packed = np.concatenate([doc_a, doc_b])[None]
    segments = np.array([[1] * 5 + [2] * 9])
    positions = np.array([list(range(5)) + list(range(9))])
    out = models.forward(
        cfg, params, jnp.asarray(packed), positions=jnp.asarray(positions), segment_ids=jnp.asarray(segments)
    )
    alone_a = models.forward(cfg, params, jnp.asarray(doc_a[None]))
    alone_b = models.forward(cfg, params, jnp.asarray(doc_b[None]))
    np.testing.assert_allclose(out[:, :5], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], alone_b, atol=1e-5)


def test_bfloat16_compute_keeps_fp32_params_and_logits(tiny):
    cfg, params = tiny
    cfg16 = cfg.replace(dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(models.init_params(cfg16, jax.random.key(0))))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, size=(2, 16)))
    lo, hi = models.forward(cfg16, params, tokens), models.forward(cfg, params, tokens)
    assert lo.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(lo - hi))) < 0.1  # bf16 rounding only
    assert float(jnp.max(jnp.abs(lo - hi))) > 0  # and it really computed in bf16


def test_param_count_matches_the_tree():
    for name in ("tiny", "cpu_small", "olmo_400m", "olmo2_1b_instruct"):
        cfg = models.get_preset(name)
        assert sum(x.size for x in jax.tree.leaves(models.abstract_params(cfg))) == cfg.num_params(), name
    big = models.get_preset("olmo_1b")
    assert 1.1e9 < big.num_params() < 1.6e9
    assert "olmo_400m" in models.describe_presets()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_heads=8, num_kv_heads=3), "num_kv_heads=3 must be >= 1 and divide num_heads=8"),
        (dict(d_model=60, num_heads=8), "d_model=60 is not divisible by num_heads=8"),
        (dict(dtype="float16"), "ModelConfig.dtype='float16'"),
        (dict(head_dim=7), "head_dim=7 must be even"),
        (dict(vocab_size=0), "ModelConfig.vocab_size=0"),
    ],
)
def test_config_errors_name_the_knob(kwargs, match):
    base = dict(vocab_size=32, d_model=64, num_layers=1, num_heads=8, mlp_dim=64)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **kwargs})


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown model preset 'huge'.*tiny"):
        models.get_preset("huge")


def test_kv_cache_chunks_match_full_forward():
    """Prefill a chunk, then feed 1- and 3-token chunks through the cache: logits equal a full forward's."""
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, jax.random.key(4))
    tokens = jax.random.randint(jax.random.key(5), (2, 12), 0, cfg.vocab_size)
    full = np.asarray(models.forward(cfg, params, tokens))
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    cache = models.init_cache(cfg, jnp.ones((2, 16), jnp.int32))
    split = models.split_layers(params)
    step = jax.jit(lambda p, t, c, i, pos: models.forward_cached(cfg, p, t, c, i, positions=pos))
    for start, stop in ((0, 5), (5, 6), (6, 9), (9, 12)):
        logits, cache = step(split if start else params, tokens[:, start:stop], cache, start, positions[:, start:stop])
        np.testing.assert_allclose(np.asarray(logits), full[:, stop - 1], atol=1e-5, rtol=0)


@pytest.mark.slow  # ~35 s of eager decoding; test_rollouts.py and test_learner.py share prefixes in the fast tier
def test_a_shared_prefix_equals_the_rows_written_out():
    """Two prompts, each shared by 3 rows as a prefix (its K/V held once), then different continuations through a
    cache: logits equal a full forward of each row's prompt + continuation. Both forms of a prefix are used: the
    layer-stacked one ``forward(return_kv=True)`` gives, and the per-layer one of a prefilled cache."""
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, jax.random.key(6))
    g, p, c = 3, 7, 5
    prompts = jax.random.randint(jax.random.key(7), (2, p), 1, cfg.vocab_size)
    rest = jax.random.randint(jax.random.key(8), (2 * g, c), 1, cfg.vocab_size)
    rows = jnp.concatenate([jnp.repeat(prompts, g, axis=0), rest], axis=1)
    full = np.asarray(models.forward(cfg, params, rows))
    ones = jnp.ones((2 * g, p), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(p + c), (2 * g, p + c))

    k, v = models.forward(cfg, params, prompts, return_kv=True)  # [layers, 2, KV, p, hd]
    stacked = models.PrefixKV(k, v, ones, g)
    logits = models.forward(cfg, params, rest, positions=pos[:, p:], prefix=stacked)
    np.testing.assert_allclose(np.asarray(logits), full[:, p:], atol=1e-4, rtol=0)

    prompt_cache = models.init_cache(cfg, jnp.ones((2, p), jnp.int32))
    _, prompt_cache = models.forward_cached(cfg, params, prompts, prompt_cache, 0, positions=pos[:2, :p])
    per_layer = models.PrefixKV(prompt_cache.k, prompt_cache.v, ones, g)
    cache = models.init_cache(cfg, jnp.ones((2 * g, c), jnp.int32))
    for t in range(c):
        logits, cache = models.forward_cached(
            cfg, params, rest[:, t : t + 1], cache, t, positions=pos[:, p + t : p + t + 1], prefix=per_layer
        )
        np.testing.assert_allclose(np.asarray(logits), full[:, p + t], atol=1e-4, rtol=0)
