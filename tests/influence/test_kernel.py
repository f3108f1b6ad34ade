"""The kernel: grad_dot in jvp mode against per-example gradients, both against finite differences, sharded
against unsharded; influence_scores' two paths and their sign."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from synpro_jax import models, sharding
from synpro_jax.influence import example_losses, grad_dot, influence_scores, tree_sub


@pytest.fixture(scope="module")
def setup():
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(8, 24)))
    mask = jnp.asarray((rng.random((8, 24)) > 0.3).astype(np.float32))
    return cfg, params, tokens, mask


def unit_direction(params, seed):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    d = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    norm = optax.tree.norm(d)
    return jax.tree.map(lambda x: x / norm, d)


def directions(cfg, params, tokens):
    # a random unit direction; a "fine-tune"-like direction (a few SGD steps on other text); -grad L_ref
    ref = jnp.asarray(np.random.default_rng(9).integers(0, cfg.vocab_size, size=(4, 24)))
    g_ref = jax.grad(lambda p: jnp.mean(example_losses(cfg, p, ref)))(params)
    return {
        "random": unit_direction(params, 1),
        "tracin": jax.tree.map(lambda g: -g, g_ref),
        "finetune": jax.tree.map(lambda g: -0.5 * g, g_ref),
    }


@pytest.mark.parametrize("name", ["random", "tracin", "finetune"])
def test_jvp_equals_per_example_gradients(setup, name):
    cfg, params, tokens, mask = setup
    d = directions(cfg, params, tokens)[name]
    for m in (None, mask):
        jvp = grad_dot(cfg, params, d, tokens, loss_mask=m, mode="jvp")
        exact = grad_dot(cfg, params, d, tokens, loss_mask=m, mode="per_example", micro_batch=3)
        assert jvp.shape == (8,) and jvp.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(jvp), np.asarray(exact), atol=1e-5, rtol=1e-5)


def test_both_match_central_finite_differences(setup):
    """Tolerance: the losses are fp32 (relative rounding ~1e-7 on values ~5.5), so a central difference with step
    eps carries rounding error ~ 5.5e-7 / eps; its truncation error is O(eps^2). Richardson extrapolation of eps and
    eps/2 removes the eps^2 term. With eps = 0.05 along a unit direction the rounding bound is ~2e-5, so we ask
    for 1e-4 (abs) on influences of size ~1e-2..1."""
    cfg, params, tokens, mask = setup
    d = unit_direction(params, 3)

    def losses_at(t):
        p = jax.tree.map(lambda x, y: x + t * y, params, d)
        return np.asarray(example_losses(cfg, p, tokens, mask), np.float64)

    def central(eps):
        return (losses_at(eps) - losses_at(-eps)) / (2 * eps)

    eps = 0.05
    fd = (4 * central(eps / 2) - central(eps)) / 3
    jvp = np.asarray(grad_dot(cfg, params, d, tokens, loss_mask=mask, mode="jvp"))
    exact = np.asarray(grad_dot(cfg, params, d, tokens, loss_mask=mask, mode="per_example"))
    assert np.abs(jvp).max() > 1e-2  # a meaningful signal to compare
    np.testing.assert_allclose(jvp, fd, atol=1e-4)
    np.testing.assert_allclose(exact, fd, atol=1e-4)


def test_masking_changes_what_is_scored(setup):
    cfg, params, tokens, mask = setup
    d = unit_direction(params, 4)
    full = grad_dot(cfg, params, d, tokens)
    masked = grad_dot(cfg, params, d, tokens, loss_mask=mask)
    assert np.abs(np.asarray(full - masked)).max() > 1e-4


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
@pytest.mark.parametrize("mode", ["jvp", "per_example"])
def test_sharded_equals_unsharded(setup, shape, mode):
    cfg, params, tokens, mask = setup
    d = unit_direction(params, 5)
    ref = grad_dot(cfg, params, d, tokens, loss_mask=mask, mode=mode)
    mesh = sharding.make_mesh(sharding.MeshConfig(*shape))
    shardings = models.param_shardings(cfg, mesh)
    out = grad_dot(
        cfg,
        jax.device_put(params, shardings),
        jax.device_put(d, shardings),
        tokens,
        loss_mask=mask,
        mode=mode,
        mesh=mesh,
    )
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    assert out.sharding.spec == sharding.logical_to_spec(("batch",))


def test_bad_arguments(setup):
    cfg, params, tokens, _ = setup
    with pytest.raises(ValueError, match="mode='hessian'"):
        grad_dot(cfg, params, params, tokens, mode="hessian")
    with pytest.raises(ValueError, match="shaped like params"):
        grad_dot(cfg, params, {"x": 1.0}, tokens)


def test_influence_scores_exact_is_the_loss_drop_and_first_order_is_minus_grad_dot(setup):
    cfg, params, tokens, mask = setup
    d = unit_direction(params, 6)
    tuned = jax.tree.map(lambda p, x: p + 1e-3 * x, params, d)
    exact = np.asarray(influence_scores(cfg, params, tuned, tokens, loss_mask=mask))
    before = np.asarray(example_losses(cfg, params, tokens, mask))
    after = np.asarray(example_losses(cfg, tuned, tokens, mask))
    np.testing.assert_allclose(exact, before - after, atol=1e-6)
    first = np.asarray(influence_scores(cfg, params, tuned, tokens, loss_mask=mask, method="first_order"))
    raw = np.asarray(grad_dot(cfg, params, tree_sub(tuned, params), tokens, loss_mask=mask))
    np.testing.assert_allclose(first, -raw, atol=1e-7)
    np.testing.assert_allclose(first, exact, atol=2e-5)  # a 1e-3 step: first order is close


def test_influence_is_positive_for_text_the_update_makes_likelier(setup):
    """theta' = one gradient-descent step on text x: x's own influence is positive on both paths."""
    cfg, params, tokens, _ = setup
    g = jax.grad(lambda p: jnp.mean(example_losses(cfg, p, tokens)))(params)
    tuned = jax.tree.map(lambda p, x: p - 1e-2 * x, params, g)
    for method in ("exact", "first_order"):
        scores = np.asarray(influence_scores(cfg, params, tuned, tokens, method=method))
        assert scores.mean() > 0, (method, scores)


def test_influence_scores_sharded_and_bad_method(setup):
    cfg, params, tokens, mask = setup
    tuned = jax.tree.map(lambda x: x * 1.01, params)
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    shardings = models.param_shardings(cfg, mesh)
    p0, p1 = jax.device_put(params, shardings), jax.device_put(tuned, shardings)
    for method in ("exact", "first_order"):
        ref = influence_scores(cfg, params, tuned, tokens, loss_mask=mask, method=method)
        out = influence_scores(cfg, p0, p1, tokens, loss_mask=mask, method=method, mesh=mesh)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    with pytest.raises(ValueError, match="method='tracin'"):
        influence_scores(cfg, params, tuned, tokens, method="tracin")
