"""Per-example gradient influence for a whole batch: grad L_x(theta) . d for every row x at once.

``jvp`` mode pushes one tangent ``d`` forward through the per-example loss vector: a single forward-mode pass
(about the cost of two forwards) gives every row's directional derivative, with no per-example backward pass.
``exact`` mode forms each row's full gradient with ``vmap(grad)``, a micro-batch at a time to bound memory, and
dots it with ``d``; it is the reference for tests and for small models.

Directions SynPro uses: ``d = theta' - theta`` (first-order version of the probe's L_theta - L_theta'; the sign
convention there is influence ~ -grad L . d) or ``d = -grad L_ref`` (TracIn-style, one SGD step on the reference).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from synpro_jax import models, sharding
from synpro_jax.models import ModelConfig

MODES = ("jvp", "exact")


def example_losses(cfg: ModelConfig, params: Any, tokens: jax.Array, loss_mask: jax.Array | None = None) -> jax.Array:
    """[B] mean next-token cross-entropy of each row of ``tokens`` [B, T]; ``loss_mask`` [B, T] marks which
    tokens are scored as targets (position t scores the prediction of tokens[:, t])."""
    logits = models.forward(cfg, params, tokens[:, :-1])
    mask = None if loss_mask is None else loss_mask[:, 1:]
    return models.per_example_loss(logits, tokens[:, 1:], mask)


def _jvp(cfg, params, direction, tokens, loss_mask):
    direction = jax.tree.map(lambda d, p: d.astype(p.dtype), direction, params)
    _, tangent = jax.jvp(lambda p: example_losses(cfg, p, tokens, loss_mask), (params,), (direction,))
    return tangent.astype(jnp.float32)


def _exact(cfg, params, direction, tokens, loss_mask, micro_batch: int):
    mask = jnp.ones(tokens.shape, jnp.float32) if loss_mask is None else loss_mask.astype(jnp.float32)

    def one(row):
        tok, m = row
        g = jax.grad(lambda p: example_losses(cfg, p, tok[None], m[None])[0])(params)
        return optax.tree.vdot(g, direction).astype(jnp.float32)

    return jax.lax.map(one, (tokens, mask), batch_size=micro_batch)


def per_example_influence(cfg: ModelConfig, params: Any, direction: Any, tokens: jax.Array, *,
                          loss_mask: jax.Array | None = None, mode: str = "jvp", micro_batch: int = 8,
                          mesh: Mesh | None = None, rules: sharding.Rules = sharding.DEFAULT_RULES) -> jax.Array:
    """grad L_x . direction for every row x of ``tokens`` [B, T]: a [B] float32 array.

    ``direction`` is a pytree shaped like ``params``. With ``mesh`` the computation is sharded: rows over the data
    axes, params and direction as the rules say.
    """
    if mode not in MODES:
        raise ValueError(f"per_example_influence mode={mode!r}: choose one of {MODES}")
    if micro_batch < 1:
        raise ValueError(f"per_example_influence micro_batch={micro_batch}: must be >= 1")
    if jax.tree.structure(direction) != jax.tree.structure(params):
        raise ValueError("per_example_influence: direction must be a pytree shaped like params")
    fn = _compiled(cfg, mode, micro_batch, mesh, rules, loss_mask is not None)
    args = (params, direction, jnp.asarray(tokens)) + ((jnp.asarray(loss_mask),) if loss_mask is not None else ())
    if mesh is None:
        return fn(*args)
    with jax.set_mesh(mesh):
        return fn(*args)


@functools.lru_cache(maxsize=32)
def _compiled(cfg, mode, micro_batch, mesh, rules, has_mask):
    def fn(params, direction, tokens, loss_mask=None):
        with sharding.use_rules(rules):
            if mode == "jvp":
                return _jvp(cfg, params, direction, tokens, loss_mask)
            return _exact(cfg, params, direction, tokens, loss_mask, micro_batch)

    if mesh is None:
        return jax.jit(fn)
    p_shard = models.param_shardings(cfg, mesh, rules)
    rows = sharding.batch_sharding(mesh, rules)
    vec = NamedSharding(mesh, sharding.logical_to_spec(("batch",), rules))
    in_sh = (p_shard, p_shard, rows) + ((rows,) if has_mask else ())
    return jax.jit(fn, in_shardings=in_sh, out_shardings=vec)


def tree_sub(a: Any, b: Any) -> Any:
    """a - b leafwise (e.g. theta' - theta)."""
    return jax.tree.map(lambda x, y: x - y, a, b)
