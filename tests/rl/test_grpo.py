"""GRPO math against an independent NumPy (float64, explicit loops) implementation, and the config's checks."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax.rl import grpo
from synpro_jax.rl.config import GRPOConfig

RTOL, ATOL = 1e-6, 1e-9  # the 1e-6, compared with jax in float64
AGG_MODES = ("token-mean", "sequence-mean-token-mean", "sequence-sum-fixed-length")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------------------------------ NumPy reference


def np_advantages(rewards, G, scale, eps=1e-4):
    out = np.zeros(len(rewards))
    batch_std = np.std(rewards, ddof=1)
    for g0 in range(0, len(rewards), G):
        grp = rewards[g0 : g0 + G]
        mean = sum(grp) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
        for i in range(G):
            if len(set(grp.tolist())) == 1:
                a = 0.0
            elif scale == "group":
                a = (grp[i] - mean) / (std + eps)
            elif scale == "batch":
                a = (grp[i] - mean) / (batch_std + eps)
            else:
                a = grp[i] - mean
            out[g0 + i] = a
    return out


def np_rloo(rewards, G):
    out = np.zeros(len(rewards))
    for g0 in range(0, len(rewards), G):
        grp = rewards[g0 : g0 + G]
        for i in range(G):
            out[g0 + i] = grp[i] - (sum(grp) - grp[i]) / (G - 1)
    return out


def np_kl(logp, ref, mode):
    d = logp - ref
    return {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(ref - logp) - (ref - logp) - 1}[mode]


def np_clip_loss(logp, old, adv, eps, eps_hi):
    loss = np.zeros_like(logp)
    clipped = np.zeros(logp.shape, bool)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            rho = math.exp(logp[i, t] - old[i, t])
            a = adv[i]
            unclipped, clip = rho * a, min(max(rho, 1 - eps), 1 + eps_hi) * a
            loss[i, t] = -min(unclipped, clip)
            clipped[i, t] = clip < unclipped  # the min picked the clipped term strictly
    return loss, clipped


def np_aggregate(x, mask, mode, L):
    """The loss value of a whole batch (not a pair): rows with an empty mask are skipped."""
    rows = [i for i in range(x.shape[0]) if mask[i].sum() > 0]
    if not rows:
        return 0.0
    if mode == "token-mean":
        return sum(x[i, t] for i in rows for t in range(x.shape[1]) if mask[i, t]) / mask.sum()
    per_seq = []
    for i in rows:
        s = sum(x[i, t] for t in range(x.shape[1]) if mask[i, t])
        per_seq.append(s / mask[i].sum() if mode == "sequence-mean-token-mean" else s / L)
    return sum(per_seq) / len(per_seq)


def np_loss(logp, old, ref, adv, mask, cfg):
    pg, clipped = np_clip_loss(logp, old, adv, cfg.epsilon, cfg.epsilon_high)
    kl = np_kl(logp, ref, cfg.kl_loss_mode)
    if cfg.kl_bias_correction:  # TRL 1.16's use_bias_correction_kl: the KL times the importance ratio
        kl = kl * np.exp(logp - old)
    n = mask.sum()
    return {
        "loss": np_aggregate(pg + cfg.beta * kl, mask, cfg.loss_agg_mode, cfg.max_completion_tokens),
        "policy_loss": np_aggregate(pg, mask, cfg.loss_agg_mode, cfg.max_completion_tokens),
        "kl": (kl * mask).sum() / n,
        "clip_fraction": (clipped * mask).sum() / n,
    }


def random_batch(seed, n=8, t=7, empty_rows=(2,)):
    rng = np.random.default_rng(seed)
    logp = -rng.gamma(1.0, 1.0, size=(n, t))
    old = logp + rng.normal(0, 0.25, size=(n, t))  # ratios spread across both clip bounds
    ref = logp + rng.normal(0, 0.5, size=(n, t))
    adv = rng.normal(size=n)
    lengths = rng.integers(1, t + 1, size=n)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    for r in empty_rows:
        mask[r] = 0
    # Padding slots hold garbage the loss must never see.
    logp = np.where(mask > 0, logp, -np.inf)
    old = np.where(mask > 0, old, np.nan)
    ref = np.where(mask > 0, ref, np.inf)
    return logp, old, ref, adv, mask


def clean(a, mask):
    return np.where(mask > 0, a, 0.0)


# -------------------------------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_numpy(x64, scale):
    rng = np.random.default_rng(0)
    G = 8
    r = rng.normal(size=5 * G) * 3
    r[2 * G : 3 * G] = 0.1  # a degenerate group
    got = np.asarray(grpo.group_advantages(jnp.asarray(r), G, scale_rewards=scale))
    want = np_advantages(r, G, scale)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.all(got[2 * G : 3 * G] == 0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_degenerate_groups_have_exactly_zero_advantage_in_float32(scale):
    G = 8
    # 0.1 and 1/3 are not exact in binary: a naive r - mean leaves a rounding residue that the std division
    # (std ~ 0 + eps) would blow up to ~1e-3.
    r = np.concatenate([np.full(G, 0.1), np.full(G, 1 / 3), np.full(G, -7.3), np.arange(G) * 1.0]).astype(np.float32)
    adv = np.asarray(grpo.group_advantages(jnp.asarray(r), G, scale_rewards=scale))
    assert adv.dtype == np.float32
    assert np.all(adv[: 3 * G] == 0.0)
    assert np.all(adv[3 * G :] != 0.0)
    rloo = np.asarray(grpo.rloo_advantages(jnp.asarray(r), G))
    assert np.all(rloo[: 3 * G] == 0.0)


def test_rloo_matches_numpy(x64):
    rng = np.random.default_rng(1)
    r = rng.normal(size=4 * 6)
    np.testing.assert_allclose(np.asarray(grpo.rloo_advantages(jnp.asarray(r), 6)), np_rloo(r, 6), rtol=RTOL, atol=ATOL)


def test_compute_advantages_follows_config(x64):
    rng = np.random.default_rng(2)
    r = rng.normal(size=3 * 4)
    cfg = GRPOConfig(num_generations=4, scale_rewards="batch", advantage_eps=1e-3)
    np.testing.assert_allclose(
        np.asarray(grpo.compute_advantages(jnp.asarray(r), cfg)),
        np_advantages(r, 4, "batch", eps=1e-3),
        rtol=RTOL,
        atol=ATOL,
    )
    rl = GRPOConfig(num_generations=4, advantage_estimator="rloo", scale_rewards="none")
    np.testing.assert_allclose(
        np.asarray(grpo.compute_advantages(jnp.asarray(r), rl)), np_rloo(r, 4), rtol=RTOL, atol=ATOL
    )


def test_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="multiple of num_generations=4"):
        grpo.group_advantages(jnp.ones(6), 4)


# ------------------------------------------------------------------------------------- KL, clipping, aggregation


@pytest.mark.parametrize("mode", ["k1", "k2", "k3"])
def test_kl_estimators_match_numpy(x64, mode):
    rng = np.random.default_rng(3)
    logp, ref = -rng.gamma(1.0, 1.0, size=(6, 9)), -rng.gamma(1.0, 1.0, size=(6, 9))
    got = np.asarray(grpo.kl_per_token(jnp.asarray(logp), jnp.asarray(ref), mode))
    np.testing.assert_allclose(got, np_kl(logp, ref, mode), rtol=RTOL, atol=ATOL)
    if mode == "k3":
        assert np.all(got >= 0)


def test_clipping_with_epsilon_high_matches_numpy(x64):
    rng = np.random.default_rng(4)
    n, t = 16, 12
    old = -rng.gamma(1.0, 1.0, size=(n, t))
    logp = old + np.log(rng.uniform(0.6, 1.5, size=(n, t)))  # ratios 0.6 .. 1.5
    adv = rng.normal(size=n)
    loss, clipped = grpo.clipped_policy_loss(
        jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), epsilon=0.2, epsilon_high=0.28
    )
    want_loss, want_clipped = np_clip_loss(logp, old, adv, 0.2, 0.28)
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(clipped), want_clipped)
    rho = np.exp(logp - old)
    a = np.broadcast_to(adv[:, None], rho.shape)
    # The test covers both bounds, and the gap (1.2, 1.28] where only epsilon_high keeps a token unclipped.
    assert np.any(want_clipped & (a < 0)) and np.any(want_clipped & (a > 0))
    gap = (rho > 1.2) & (rho <= 1.28) & (a > 0)
    assert gap.any() and not np.asarray(clipped)[gap].any()
    _, sym = grpo.clipped_policy_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), epsilon=0.2)
    assert np.asarray(sym)[gap].all()


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_modes_match_numpy(x64, mode):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 10))
    mask = (rng.uniform(size=(7, 10)) < 0.6).astype(np.float64)
    mask[4] = 0  # an empty completion
    xg = np.where(mask > 0, x, np.nan)  # masked slots must not leak, even as NaN
    s, d = grpo.aggregate(jnp.asarray(xg), jnp.asarray(mask), mode, max_len=10)
    assert np.isfinite(float(s)) and np.isfinite(float(d))
    np.testing.assert_allclose(float(s) / float(d), np_aggregate(x, mask, mode, 10), rtol=RTOL, atol=ATOL)


def test_fixed_length_mode_needs_a_length():
    with pytest.raises(ValueError, match="max_len"):
        grpo.aggregate(jnp.ones((2, 3)), jnp.ones((2, 3)), "sequence-sum-fixed-length")
    with pytest.raises(ValueError, match="loss_agg_mode='mean'"):
        grpo.aggregate(jnp.ones((2, 3)), jnp.ones((2, 3)), "mean")


# ---------------------------------------------------------------------------------------------- the whole loss


@pytest.mark.parametrize("kl_bias_correction", [True, False])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("kl_mode", ["k1", "k2", "k3"])
def test_grpo_loss_terms_match_numpy(x64, mode, kl_mode, kl_bias_correction):
    logp, old, ref, adv, mask = random_batch(6)
    cfg = GRPOConfig(
        num_generations=4,
        beta=0.3,
        epsilon=0.2,
        epsilon_high=0.28,
        kl_loss_mode=kl_mode,
        loss_agg_mode=mode,
        max_completion_tokens=9,
        kl_bias_correction=kl_bias_correction,
    )
    terms = grpo.grpo_loss_terms(*map(jnp.asarray, (logp, old, ref, adv, mask)), cfg)
    got = {k: float(v) for k, v in grpo.finalize(terms).items()}
    want = np_loss(clean(logp, mask), clean(old, mask), clean(ref, mask), adv, mask, cfg)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)
    assert 0 < got["clip_fraction"] < 1


@pytest.mark.parametrize("mode", AGG_MODES)
def test_empty_completion_adds_nothing_and_no_nan(mode):
    logp, old, ref, adv, mask = random_batch(7, empty_rows=())
    cfg = GRPOConfig(num_generations=4, loss_agg_mode=mode, max_completion_tokens=7, beta=0.1)
    base = grpo.finalize(grpo.grpo_loss_terms(*map(jnp.asarray, (logp, old, ref, adv, mask)), cfg))
    # Append an all-padding row full of garbage.
    pad = lambda a, v: np.concatenate([a, np.full((1,) + a.shape[1:], v)])  # noqa: E731
    args = (pad(logp, -np.inf), pad(old, np.nan), pad(ref, np.inf), pad(adv, 5.0), pad(mask, 0.0))
    args = tuple(jnp.asarray(a, jnp.float32) for a in args)
    more = grpo.finalize(grpo.grpo_loss_terms(*args, cfg))
    for k in base:
        assert np.isfinite(float(more[k])), k
        np.testing.assert_allclose(float(more[k]), float(base[k]), rtol=1e-6, err_msg=k)

    def loss(lp):
        s, d = grpo.grpo_loss_terms(lp, args[1], args[2], args[3], args[4], cfg)["loss"]
        return s / d

    g = np.asarray(jax.grad(loss)(args[0]))
    assert np.all(np.isfinite(g)) and np.all(g[-1] == 0)
    # A batch that is all padding: zero loss, no NaN.
    empty = grpo.finalize(
        grpo.grpo_loss_terms(args[0][-1:], args[1][-1:], args[2][-1:], args[3][-1:], args[4][-1:], cfg)
    )
    assert all(float(v) == 0.0 for v in empty.values())


def test_on_policy_ratio_is_one_but_keeps_the_gradient(x64):
    logp, _, ref, adv, mask = random_batch(8)
    cfg = GRPOConfig(num_generations=4, beta=0.0)
    lp, m, a = jnp.asarray(logp), jnp.asarray(mask), jnp.asarray(adv)
    terms = grpo.grpo_loss_terms(lp, None, None, a, m, cfg)
    assert "kl" not in terms and float(grpo.finalize(terms)["clip_fraction"]) == 0.0
    # d/dlogp of -exp(logp - sg(logp)) * A = -A per token, over the token-mean denominator.
    g = np.asarray(jax.grad(lambda x: grpo.finalize(grpo.grpo_loss_terms(x, None, None, a, m, cfg))["loss"])(lp))
    np.testing.assert_allclose(g, -adv[:, None] * mask / mask.sum(), rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="GRPOConfig.beta"):
        grpo.grpo_loss_terms(lp, None, None, a, m, GRPOConfig(num_generations=4, beta=0.1))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_two_micro_batches_recombine_exactly(x64, mode):
    logp, old, ref, adv, mask = random_batch(9, n=12, empty_rows=(1, 7))
    cfg = GRPOConfig(num_generations=4, beta=0.05, loss_agg_mode=mode, max_completion_tokens=7)
    arrays = tuple(map(jnp.asarray, (logp, old, ref, adv, mask)))
    full = grpo.grpo_loss_terms(*arrays, cfg)
    split = 5  # unequal halves, so a mean of per-micro-batch means would be wrong
    parts = [grpo.grpo_loss_terms(*(a[sl] for a in arrays), cfg) for sl in (slice(0, split), slice(split, None))]
    got, want = grpo.finalize(grpo.combine(*parts)), grpo.finalize(full)
    for k in want:
        np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=RTOL, atol=ATOL, err_msg=k)
    naive = np.mean([float(grpo.finalize(p)["loss"]) for p in parts])
    assert abs(naive - float(want["loss"])) > 1e-6  # the pairs matter

    # Gradients: each micro-batch's sum over the whole batch's denominator, added, equal the full gradient.
    denom = grpo.loss_denominator(arrays[4], cfg)
    assert float(denom) == float(full["loss"][1])

    def part_loss(lp, sl):
        return grpo.grpo_loss_terms(lp, *(a[sl] for a in arrays[1:]), cfg)["loss"][0] / denom

    g_full = jax.grad(lambda lp: grpo.finalize(grpo.grpo_loss_terms(lp, *arrays[1:], cfg))["loss"])(arrays[0])
    g0 = jax.grad(part_loss)(arrays[0][:split], slice(0, split))
    g1 = jax.grad(part_loss)(arrays[0][split:], slice(split, None))
    np.testing.assert_allclose(np.concatenate([g0, g1]), np.asarray(g_full), rtol=RTOL, atol=ATOL)


def test_float32_loss_close_to_float64_reference():
    logp, old, ref, adv, mask = random_batch(10, n=16, t=32)
    cfg = GRPOConfig(num_generations=4, epsilon_high=0.28)
    terms = grpo.grpo_loss_terms(*(jnp.asarray(a, jnp.float32) for a in (logp, old, ref, adv, mask)), cfg)
    got = grpo.finalize(terms)
    want = np_loss(clean(logp, mask), clean(old, mask), clean(ref, mask), adv, mask, cfg)
    for k in want:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, atol=1e-7, err_msg=k)
    jitted = jax.jit(lambda *a: grpo.finalize(grpo.grpo_loss_terms(*a, cfg)))(
        *(jnp.asarray(a, jnp.float32) for a in (logp, old, ref, adv, mask))
    )
    for k in want:
        np.testing.assert_allclose(float(jitted[k]), want[k], rtol=1e-5, atol=1e-7, err_msg=k)


# ------------------------------------------------------------------ KL bias correction (TRL's use_bias_correction_kl)

GRAD_RTOL = 1e-5  # float32 gradients against the float64 NumPy reference


def np_loss_grad(logp, old, ref, adv, mask, cfg):
    """d loss / d logp of the whole batch, written out per token (old_logp is a constant: no gradient)."""
    n, t = logp.shape
    rows = [i for i in range(n) if mask[i].sum() > 0]
    grad = np.zeros_like(logp)
    for i in rows:
        for j in range(t):
            if not mask[i, j]:
                continue
            rho, a = math.exp(logp[i, j] - old[i, j]), adv[i]
            unclipped, clip = rho * a, min(max(rho, 1 - cfg.epsilon), 1 + cfg.epsilon_high) * a
            d_pg = -a * rho if unclipped <= clip else 0.0  # the min picks the clipped constant otherwise
            d = logp[i, j] - ref[i, j]
            kl, d_kl = {"k1": (d, 1.0), "k2": (0.5 * d * d, d), "k3": (math.exp(-d) + d - 1, 1 - math.exp(-d))}[
                cfg.kl_loss_mode
            ]
            if cfg.kl_bias_correction:  # d(kl * rho) = d_kl * rho + kl * rho, since d rho / d logp = rho
                d_kl = d_kl * rho + kl * rho
            if cfg.loss_agg_mode == "token-mean":
                w = 1 / mask.sum()
            elif cfg.loss_agg_mode == "sequence-mean-token-mean":
                w = 1 / (mask[i].sum() * len(rows))
            else:
                w = 1 / (cfg.max_completion_tokens * len(rows))
            grad[i, j] = (d_pg + cfg.beta * d_kl) * w
    return grad


def jax_loss_and_grad(logp, old, ref, adv, mask, cfg, dtype=jnp.float32):
    args = [None if a is None else jnp.asarray(a, dtype) for a in (old, ref, adv, mask)]

    def loss(lp):
        return grpo.finalize(grpo.grpo_loss_terms(lp, *args, cfg))["loss"]

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logp, dtype))
    return float(value), np.asarray(grad, np.float64)


def test_numpy_reference_gradient_matches_finite_differences():
    """The analytic NumPy gradient below is itself checked against central differences of the NumPy loss."""
    logp, old, ref, adv, mask = random_batch(11, n=4, t=5, empty_rows=(1,))
    logp, old, ref = (clean(a, mask) for a in (logp, old, ref))
    for bias in (True, False):
        for kl_mode in ("k1", "k3"):
            for agg in AGG_MODES:
                cfg = GRPOConfig(
                    num_generations=2,
                    beta=0.3,
                    epsilon_high=0.28,
                    kl_loss_mode=kl_mode,
                    loss_agg_mode=agg,
                    max_completion_tokens=5,
                    kl_bias_correction=bias,
                )
                want = np_loss_grad(logp, old, ref, adv, mask, cfg)
                fd = np.zeros_like(logp)
                h = 1e-6
                for i, j in zip(*np.nonzero(mask)):
                    up, dn = logp.copy(), logp.copy()
                    up[i, j] += h
                    dn[i, j] -= h
                    fd[i, j] = (
                        np_loss(up, old, ref, adv, mask, cfg)["loss"] - np_loss(dn, old, ref, adv, mask, cfg)["loss"]
                    ) / (2 * h)
                np.testing.assert_allclose(want, fd, rtol=1e-6, atol=1e-9, err_msg=f"{bias} {kl_mode} {agg}")


@pytest.mark.parametrize("on_policy", [True, False])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("kl_bias_correction", [True, False])
def test_kl_bias_correction_loss_and_gradient_match_numpy_in_float32(kl_bias_correction, mode, on_policy):
    logp, old, ref, adv, mask = random_batch(12, n=12, t=16, empty_rows=(5,))
    cfg = GRPOConfig(
        num_generations=4,
        beta=0.3,
        epsilon_high=0.28,
        loss_agg_mode=mode,
        max_completion_tokens=16,
        kl_bias_correction=kl_bias_correction,
    )
    lp, o, r = clean(logp, mask), clean(old, mask), clean(ref, mask)
    if on_policy:
        o = lp
    value, grad = jax_loss_and_grad(logp, None if on_policy else old, ref, adv, mask, cfg)
    want_grad = np_loss_grad(lp, o, r, adv, mask, cfg)
    np.testing.assert_allclose(value, np_loss(lp, o, r, adv, mask, cfg)["loss"], rtol=GRAD_RTOL, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=GRAD_RTOL, atol=GRAD_RTOL * np.abs(want_grad).max())
    assert np.all(grad[mask == 0] == 0)


def test_on_policy_kl_gradient_is_the_reverse_kl_gradient_with_the_correction():
    """With A = 0 only the KL term is left: per token beta * (logp - ref) / N with the correction (k3 * rho, rho = 1
    but d rho = rho), beta * (1 - exp(ref - logp)) / N without it."""
    logp, _, ref, _, mask = random_batch(13, n=8, t=12)
    lp, r, n = clean(logp, mask), clean(ref, mask), mask.sum()
    zero = np.zeros(logp.shape[0])
    grads = {}
    for bias in (True, False):
        cfg = GRPOConfig(num_generations=4, beta=0.5, kl_bias_correction=bias)
        value, grads[bias] = jax_loss_and_grad(logp, None, ref, zero, mask, cfg)
        # The loss value on-policy does not depend on the setting: rho = 1.
        np.testing.assert_allclose(value, 0.5 * (np_kl(lp, r, "k3") * mask).sum() / n, rtol=GRAD_RTOL)
    np.testing.assert_allclose(grads[True], 0.5 * (lp - r) * mask / n, rtol=GRAD_RTOL, atol=1e-9)
    np.testing.assert_allclose(grads[False], 0.5 * (1 - np.exp(r - lp)) * mask / n, rtol=GRAD_RTOL, atol=1e-9)
    assert np.linalg.norm(grads[True] - grads[False]) > 0.1 * np.linalg.norm(grads[False])


def test_kl_metric_is_the_corrected_term_off_policy(x64):
    logp, old, ref, adv, mask = random_batch(14)
    arrays = tuple(map(jnp.asarray, (logp, old, ref, adv, mask)))
    lp, o, r = clean(logp, mask), clean(old, mask), clean(ref, mask)
    for bias in (True, False):
        got = grpo.finalize(grpo.grpo_loss_terms(*arrays, GRPOConfig(num_generations=4, kl_bias_correction=bias)))
        kl = np_kl(lp, r, "k3") * (np.exp(lp - o) if bias else 1)
        np.testing.assert_allclose(float(got["kl"]), (kl * mask).sum() / mask.sum(), rtol=RTOL, atol=ATOL)


TRL_LOSS_TYPES = {"dapo": "token-mean", "grpo": "sequence-mean-token-mean", "dr_grpo": "sequence-sum-fixed-length"}


def trl_compute_loss(logp, old, ref, adv, mask, *, loss_type, beta, epsilon, epsilon_high, bias_correction, max_len):
    """TRL 1.16's ``GRPOTrainer._compute_loss`` itself, on a stand-in trainer whose model returns ``logp``.

    One process, no accumulation (steps_per_generation 1), no vLLM, no entropy terms: the settings of the release.
    Returns the loss, d loss / d logp and TRL's logged metrics."""
    import collections
    import types

    import torch
    from trl.trainer.grpo_trainer import GRPOTrainer

    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    lp = f32(logp).requires_grad_(True)
    n, t = logp.shape
    accelerator = types.SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x)
    trainer = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=epsilon,
        epsilon_high=epsilon_high,
        use_vllm=False,
        model=types.SimpleNamespace(training=True),
        accelerator=accelerator,
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        max_completion_length=max_len,
        _metrics={"train": collections.defaultdict(list)},
        args=types.SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1),
    )
    inputs = {
        "prompt_ids": torch.zeros((n, 1), dtype=torch.long),
        "prompt_mask": torch.ones((n, 1)),
        "completion_ids": torch.zeros((n, t), dtype=torch.long),
        "completion_mask": f32(mask),
        "advantages": f32(adv),
        "ref_per_token_logps": f32(ref),
        "num_items_in_batch": f32(mask.sum()),
    }
    if old is not None:
        inputs["old_per_token_logps"] = f32(old)
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return float(loss.detach()), lp.grad.numpy().astype(np.float64), metrics


@pytest.mark.parametrize("on_policy", [True, False])
@pytest.mark.parametrize("loss_type", sorted(TRL_LOSS_TYPES))
@pytest.mark.parametrize("kl_bias_correction", [True, False])
def test_loss_and_gradient_match_trl_1_16(kl_bias_correction, loss_type, on_policy):
    pytest.importorskip("torch", reason="torch is not installed (setup.py's bench extra)")
    trl = pytest.importorskip("trl", reason="trl is not installed (pip install trl==1.16.0, setup.py's bench extra)")
    if trl.__version__ != "1.16.0":
        pytest.skip(f"trl {trl.__version__} installed: this stand-in trainer follows TRL 1.16.0's _compute_loss")
    # No empty rows: TRL's "grpo" and "dr_grpo" count them in the mean over sequences, this module does not.
    logp, old, ref, adv, mask = random_batch(15, n=8, t=10, empty_rows=())
    lp, o, r = clean(logp, mask), clean(old, mask), clean(ref, mask)
    cfg = GRPOConfig(
        num_generations=4,
        beta=0.3,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_agg_mode=TRL_LOSS_TYPES[loss_type],
        max_completion_tokens=10,
        kl_bias_correction=kl_bias_correction,
    )
    want, want_grad, trl_metrics = trl_compute_loss(
        lp,
        None if on_policy else o,
        r,
        adv,
        mask,
        loss_type=loss_type,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        bias_correction=kl_bias_correction,
        max_len=cfg.max_completion_tokens,
    )
    value, grad = jax_loss_and_grad(logp, None if on_policy else old, ref, adv, mask, cfg)
    np.testing.assert_allclose(value, want, rtol=GRAD_RTOL, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=GRAD_RTOL, atol=GRAD_RTOL * np.abs(want_grad).max())
    f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)  # noqa: E731
    terms = grpo.finalize(
        grpo.grpo_loss_terms(f32(logp), f32(None if on_policy else old), f32(ref), f32(adv), f32(mask), cfg)
    )
    np.testing.assert_allclose(float(terms["kl"]), trl_metrics["kl"], rtol=GRAD_RTOL)
    np.testing.assert_allclose(float(terms["clip_fraction"]), trl_metrics["clip_ratio/region_mean"], atol=1e-7)
    if not on_policy:
        assert float(terms["clip_fraction"]) > 0


# ------------------------------------------------------------------------------------------------- registries


def test_registries_plug_in_new_estimators_and_losses(x64):
    @grpo.register_advantage("test_mean_only")
    def mean_only(rewards, num_generations, *, scale_rewards, eps, ddof):
        return grpo.group_advantages(rewards, num_generations, scale_rewards="none")

    @grpo.register_policy_loss("test_vanilla_pg")
    def vanilla(logp, old_logp, advantages, cfg):
        return -jnp.asarray(advantages)[:, None] * logp, jnp.zeros(logp.shape, bool)

    assert "grpo" in grpo.registered_advantages() and "rloo" in grpo.registered_advantages()
    cfg = GRPOConfig(
        num_generations=2, advantage_estimator="test_mean_only", policy_loss_fn="test_vanilla_pg", beta=0.0
    )
    r = jnp.asarray([1.0, 3.0, 2.0, 2.0])
    np.testing.assert_array_equal(np.asarray(grpo.compute_advantages(r, cfg)), [-1.0, 1.0, 0.0, 0.0])
    lp, m = jnp.full((4, 2), -1.0), jnp.ones((4, 2))
    loss = grpo.finalize(grpo.grpo_loss_terms(lp, None, None, jnp.asarray([1.0, 2, 0, 0]), m, cfg))["loss"]
    assert float(loss) == pytest.approx((1 * 2 + 2 * 2) / 8)
    with pytest.raises(ValueError, match="already registered"):
        grpo.register_advantage("test_mean_only")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="already registered"):
        grpo.register_policy_loss("grpo")(lambda *a: None)


# ----------------------------------------------------------------------------------------------------- config


def test_config_defaults_are_the_release_settings():
    c = GRPOConfig()
    assert (c.num_generations, c.num_iterations, c.beta, c.epsilon, c.epsilon_high) == (8, 1, 0.005, 0.2, 0.2)
    assert (c.kl_loss_mode, c.loss_agg_mode, c.scale_rewards, c.advantage_eps) == ("k3", "token-mean", "group", 1e-4)
    assert (c.learning_rate, c.warmup_ratio, c.min_lr_ratio, c.temperature, c.top_p) == (1e-6, 0.1, 0.1, 1.0, 0.9)
    assert c.kl_bias_correction is True  # TRL 1.16's use_bias_correction_kl default
    assert GRPOConfig(epsilon_high=0.28).epsilon_high == 0.28
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.beta = 0.1
    from synpro_jax.train.optimizer import make_schedule

    sched = make_schedule(c.optimizer_config(200))
    assert float(sched(0)) == 0.0
    assert float(sched(20)) == pytest.approx(1e-6)
    assert float(sched(200)) == pytest.approx(1e-7)
    assert float(sched(110)) == pytest.approx(1e-7 + 0.5 * 0.9e-6, rel=1e-5)


@pytest.mark.parametrize(
    "knob,value",
    [
        ("num_generations", 1),
        ("num_iterations", 0),
        ("beta", -0.1),
        ("epsilon", 0.0),
        ("epsilon_high", -1.0),
        ("kl_loss_mode", "low_var_kl"),
        ("loss_agg_mode", "seq-mean-token-sum"),
        ("advantage_estimator", "ppo"),
        ("policy_loss_fn", "cispo"),
        ("scale_rewards", "std"),
        ("advantage_eps", 0.0),
        ("learning_rate", 0.0),
        ("warmup_ratio", 1.0),
        ("min_lr_ratio", 1.5),
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("max_prompt_tokens", 0),
        ("max_completion_tokens", 0),
        ("kl_bias_correction", "yes"),
    ],
)
def test_config_errors_name_the_knob(knob, value):
    with pytest.raises(ValueError, match=rf"GRPOConfig\.{knob}="):
        GRPOConfig(**{knob: value})


def test_rloo_requires_unscaled_rewards():
    with pytest.raises(ValueError, match=r"GRPOConfig\.scale_rewards='group'.*rloo"):
        GRPOConfig(advantage_estimator="rloo")


def test_optimizer_config_rejects_bad_totals():
    with pytest.raises(ValueError, match="total_steps"):
        GRPOConfig().optimizer_config(0)
    with pytest.raises(ValueError, match="GRPOConfig.warmup_ratio"):
        GRPOConfig(warmup_ratio=0.9).optimizer_config(1)
