"""Next-token choice: exact truncation sets against NumPy, and draws checked by chi-square tests.

Every statistical test uses a fixed seed (so it is deterministic) and rejects at significance ALPHA = 0.001: a
correct sampler fails a given seed with probability 0.1%, and the seeds here are fixed, so the tests never flake.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from synpro_jax import models
from synpro_jax.generation import sample
from synpro_jax.generation.sampling import (
    choose_tokens,
    filter_logits,
    invert_cdf,
    largest_threshold,
    max_and_argmax,
    top_k_mask,
    top_p_mask,
)

ALPHA = 1e-3
DRAWS = 40_000
LOGITS = np.array([2.0, 1.5, 1.1, 0.9, 0.3, 0.0, -0.2, -0.8, -1.5, -3.0, 0.45, 1.3], np.float32)


def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def np_reference(logits, temperature, top_k=None, top_p=None):
    """The truncated, renormalised distribution, computed independently with a full sort."""
    probs = np_softmax(logits / temperature)
    keep = np.ones_like(probs, bool)
    order = np.argsort(-probs, kind="stable")
    if top_k is not None:
        keep[:] = False
        keep[order[:top_k]] = True
    if top_p is not None:
        trunc = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
        mass_before = np.cumsum(trunc[order]) - trunc[order]  # mass strictly ahead of each token
        nucleus = np.zeros_like(keep)
        nucleus[order[mass_before < top_p]] = True
        keep &= nucleus
    out = np.where(keep, probs, 0)
    return out / out.sum()


def draw(temperature, top_k=None, top_p=None, seed=0):
    keys = jax.random.split(jax.random.key(seed), DRAWS)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (DRAWS, LOGITS.size))
    tokens, logp = jax.jit(choose_tokens)(logits, keys, temperature, top_k or 0, 1.0 if top_p is None else top_p)
    return np.bincount(np.asarray(tokens), minlength=LOGITS.size), np.asarray(tokens), np.asarray(logp)


def chi_square_ok(counts, expected_probs):
    support = expected_probs > 0
    assert counts[~support].sum() == 0, f"draws outside the support: {counts[~support]}"
    expected = np.asarray(expected_probs[support], np.float64)
    _, p_value = stats.chisquare(counts[support], expected / expected.sum() * counts.sum())
    return p_value


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.0, None, None),
        (0.6, None, None),
        (2.5, None, None),  # softmax(logits / T)
        (1.0, 3, None),
        (0.8, 5, None),  # top-k
        (1.0, None, 0.7),
        (1.7, None, 0.9),  # top-p
        (1.2, 6, 0.8),  # top-k then top-p on the renormalised survivors
    ],
)
def test_draws_follow_the_truncated_distribution(temperature, top_k, top_p):
    counts, tokens, logp = draw(temperature, top_k, top_p)
    expected = np_reference(LOGITS, temperature, top_k, top_p)
    p_value = chi_square_ok(counts, expected)
    assert p_value > ALPHA, f"chi-square p={p_value:.2e} for T={temperature} k={top_k} p={top_p}"
    # The reported log-prob is under softmax(logits / T), before truncation.
    np.testing.assert_allclose(logp, np.log(np_softmax(LOGITS / temperature))[tokens], atol=1e-5)


def test_the_cdf_inversion_never_lands_on_a_token_without_mass():
    mass = jnp.asarray([[0.0, 2.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 3.0, 0.0, 0.0, 0.0]])
    fallback = jnp.asarray([1, 2])
    for u, want in ((0.0, [1, 2]), (0.49, [1, 2]), (0.5, [3, 2]), (0.75, [4, 2]), (0.999, [4, 2])):
        got = invert_cdf(mass, jnp.full((2,), u, jnp.float32), fallback)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"u={u}")
    # A count that lands past the last token with mass (u = 1 is never drawn) takes the fallback.
    np.testing.assert_array_equal(np.asarray(invert_cdf(mass, jnp.ones((2,)), fallback)), [1, 2])


def test_two_level_argmax_equals_argmax():
    """First index of the max, ties, -inf rows, a NaN (jnp.argmax picks the first NaN), and a vocabulary that is
    not a multiple of the block."""
    rng = np.random.default_rng(0)
    for v in (1, 10, 64, 100, 4096, 4100):
        x = rng.normal(size=(9, v)).astype(np.float32)
        x[1] = np.round(x[1])  # many ties
        x[2] = -np.inf
        x[3, rng.integers(v)] = np.nan
        x[4, :] = x[4].max()
        x[5, -1] = 100.0  # in the padded last block
        top, index = max_and_argmax(jnp.asarray(x))
        np.testing.assert_array_equal(np.asarray(index), np.asarray(jnp.argmax(jnp.asarray(x), axis=-1)))
        np.testing.assert_array_equal(np.asarray(top), x[np.arange(len(x)), np.asarray(index)])


def test_two_level_cdf_inversion_equals_a_float64_cumsum():
    """Across many blocks (and a padded last block), zero-mass stretches included: the token whose float64
    running mass first exceeds u * total, except within float32 rounding of a boundary (none at these draws)."""
    rng = np.random.default_rng(1)
    for v in (6, 200, 4096):
        mass = rng.exponential(size=(256, v)).astype(np.float32) * (rng.random((256, v)) < 0.7)
        mass[:, 0] = 1.0  # every row has mass
        u = rng.random(256).astype(np.float32)
        got = np.asarray(invert_cdf(jnp.asarray(mass), jnp.asarray(u), jnp.zeros((256,), jnp.int32)))
        cdf = np.cumsum(mass.astype(np.float64), axis=-1)
        want = np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(-1), v - 1)
        np.testing.assert_array_equal(got, want)
        assert (mass[np.arange(256), got] > 0).all()


def test_chi_square_rejects_a_wrong_temperature():
    """The test has power: draws at T=1 are rejected as draws at T=1.3."""
    counts, _, _ = draw(1.0)
    assert chi_square_ok(counts, np_reference(LOGITS, 1.3)) < ALPHA


def test_greedy_ignores_truncation_and_reports_untempered_logprob():
    tokens, logp = choose_tokens(jnp.asarray(LOGITS)[None], jax.random.split(jax.random.key(0), 1), 0.0, 3, 0.5)
    assert int(tokens[0]) == 0
    np.testing.assert_allclose(float(logp[0]), np.log(np_softmax(LOGITS))[0], atol=1e-6)


def test_same_seed_same_draws():
    a = draw(1.0, 4, 0.9, seed=3)[1]
    b = draw(1.0, 4, 0.9, seed=3)[1]
    c = draw(1.0, 4, 0.9, seed=4)[1]
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_truncation_sets_equal_a_full_sort():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 1000)).astype(np.float32) * rng.uniform(0.1, 6, size=(64, 1))
    for k in (1, 7, 999, 1000):
        ours = np.isfinite(np.asarray(top_k_mask(jnp.asarray(logits), k)))
        ref = logits >= np.sort(logits, axis=-1)[:, -k][:, None]
        np.testing.assert_array_equal(ours, ref)
        assert (ours.sum(-1) == k).all()
    for p in (0.05, 0.5, 0.9, 0.999):
        ours = np.isfinite(np.asarray(top_p_mask(jnp.asarray(logits), p)))
        ref = np.stack([np_reference(row, 1.0, None, p) > 0 for row in logits])
        np.testing.assert_array_equal(ours, ref)


def test_threshold_search_is_exact_over_negative_and_infinite_values():
    values = jnp.asarray([[-np.inf, -3.5, -1e-30, 0.0, 2.0, np.float32(1e30)]])
    for k in range(1, 7):
        t = largest_threshold(values, lambda keep: jnp.sum(keep, -1) >= k)
        assert float(t[0]) == float(np.sort(np.asarray(values[0]))[-k])


def test_filter_off_is_identity():
    logits = jnp.asarray(LOGITS)[None]
    np.testing.assert_allclose(filter_logits(logits, 2.0, 0, 1.0), logits / 2.0, rtol=1e-6)


def test_sampler_first_tokens_follow_the_model_distribution():
    """End to end through prefill and the decode loop: first tokens of many rows of one prompt are distributed
    as softmax(model logits / T) restricted by top-p."""
    cfg = models.ModelConfig(vocab_size=10, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=64)
    params = models.init_params(cfg, jax.random.key(5))
    params["lm_head"] = params["lm_head"] * 40.0  # a peaked, far-from-uniform next-token distribution
    prompt = [3, 1, 4, 1, 5]
    rows = 4096
    out = sample(cfg, params, [prompt] * rows, max_new_tokens=1, temperature=0.9, top_p=0.95, seed=7)
    logits = np.asarray(models.forward(cfg, params, jnp.asarray([prompt]))[0, -1], np.float64)
    expected = np_reference(logits, 0.9, None, 0.95)
    assert (expected == 0).any(), "the test model should truncate something"
    counts = np.bincount(out.tokens[:, 0], minlength=cfg.vocab_size)
    assert chi_square_ok(counts, expected) > ALPHA
