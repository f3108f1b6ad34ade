"""Data influence of every row of a batch, and the per-example gradient product it is built from.

:func:`influence_scores` is the one definition of influence, the release's: ``L_theta(x) - L_theta'(x)`` (mean
token loss), where theta' is theta fine-tuned on the reference task. Positive means x helps the reference task:
the fine-tune made x more likely, and to first order a step on x lowers the reference loss. Two paths:

- ``method="exact"``: two forward passes, one under theta and one under theta'.
- ``method="first_order"``: ``-grad L_x(theta) . (theta' - theta)``, one forward-mode pass.

:func:`grad_dot` is the raw product ``grad L_x(theta) . d`` for every row at once (note: no minus sign). ``jvp``
mode pushes one tangent ``d`` forward through the per-example loss vector, about the cost of two forwards with
no per-example backward pass; ``per_example`` mode forms each row's full gradient with ``grad`` a micro-batch at a
time and dots it with ``d`` (the reference for tests and small models). With ``d = -grad L_ref`` it is the
TracIn-style score.

A row is scored by its mean loss over its own (unmasked) tokens, so padding and batch-mates never change a
score. The release's units differ (fixed 2,048-token chunks of token files; in its service, padded batch means
with no mask): see :mod:`synpro_jax.influence.run`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
import optax

from synpro_jax import models, sharding
from synpro_jax.models import ModelConfig

MODES = ("jvp", "per_example")  # how grad_dot forms grad L_x . d
METHODS = ("exact", "first_order")  # how influence_scores forms L_theta(x) - L_theta'(x)


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


def _per_example(cfg, params, direction, tokens, loss_mask, micro_batch: int):
    mask = jnp.ones(tokens.shape, jnp.float32) if loss_mask is None else loss_mask.astype(jnp.float32)

    def one(row):
        tok, m = row
        g = jax.grad(lambda p: example_losses(cfg, p, tok[None], m[None])[0])(params)
        return optax.tree.vdot(g, direction).astype(jnp.float32)

    return jax.lax.map(one, (tokens, mask), batch_size=micro_batch)


def grad_dot(
    cfg: ModelConfig,
    params: Any,
    direction: Any,
    tokens: jax.Array,
    *,
    loss_mask: jax.Array | None = None,
    mode: str = "jvp",
    micro_batch: int = 8,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> jax.Array:
    """grad L_x(params) . direction for every row x of ``tokens`` [B, T]: a [B] float32 array.

    This is the raw kernel product, not influence: for influence use :func:`influence_scores`. ``direction`` is
    a pytree shaped like ``params``. With ``mesh`` the computation is sharded: rows over the data axes, params and
    direction as the rules say.
    """
    if mode not in MODES:
        raise ValueError(f"grad_dot mode={mode!r}: choose one of {MODES}")
    if micro_batch < 1:
        raise ValueError(f"grad_dot micro_batch={micro_batch}: must be >= 1")
    if jax.tree.structure(direction) != jax.tree.structure(params):
        raise ValueError("grad_dot: direction must be a pytree shaped like params")
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
            return _per_example(cfg, params, direction, tokens, loss_mask, micro_batch)

    if mesh is None:
        return jax.jit(fn)
    p_shard = models.param_shardings(cfg, mesh, rules)
    rows = sharding.batch_sharding(mesh, rules)
    vec = NamedSharding(mesh, sharding.logical_to_spec(("batch",), rules))
    in_sh = (p_shard, p_shard, rows) + ((rows,) if has_mask else ())
    return jax.jit(fn, in_shardings=in_sh, out_shardings=vec)


@functools.lru_cache(maxsize=16)
def compiled_loss_pair(cfg: ModelConfig, mesh: Mesh | None, rules: sharding.Rules = sharding.DEFAULT_RULES):
    """jit of (params, params_ft, tokens, mask) -> (L_params(x), L_params_ft(x)), each [B]; sharded on ``mesh``."""

    def both(p0, p1, tokens, mask):
        with sharding.use_rules(rules):
            return example_losses(cfg, p0, tokens, mask), example_losses(cfg, p1, tokens, mask)

    if mesh is None:
        return jax.jit(both)
    p_shard = models.param_shardings(cfg, mesh, rules)
    rows = sharding.batch_sharding(mesh, rules)
    vec = NamedSharding(mesh, sharding.logical_to_spec(("batch",), rules))
    return jax.jit(both, in_shardings=(p_shard, p_shard, rows, rows), out_shardings=(vec, vec))


def influence_scores(
    cfg: ModelConfig,
    params: Any,
    params_ft: Any,
    tokens: jax.Array,
    *,
    loss_mask: jax.Array | None = None,
    method: str = "exact",
    mode: str = "jvp",
    micro_batch: int = 8,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> jax.Array:
    """influence(x) = L_theta(x) - L_theta'(x) for every row x of ``tokens`` [B, T]: a [B] float32 array.

    ``params`` is theta, ``params_ft`` theta' (theta fine-tuned on the reference task). Positive means x helps the
    reference task. ``method="exact"`` runs two forward passes; ``method="first_order"`` gives
    ``-grad L_x(theta) . (theta' - theta)`` through :func:`grad_dot` (``mode`` and ``micro_batch`` are its).
    """
    if method not in METHODS:
        raise ValueError(f"influence_scores method={method!r}: choose one of {METHODS}")
    if jax.tree.structure(params_ft) != jax.tree.structure(params):
        raise ValueError("influence_scores: params_ft must be a pytree shaped like params")
    if method == "first_order":
        return -grad_dot(
            cfg,
            params,
            tree_sub(params_ft, params),
            tokens,
            loss_mask=loss_mask,
            mode=mode,
            micro_batch=micro_batch,
            mesh=mesh,
            rules=rules,
        )
    tokens = jnp.asarray(tokens)
    mask = jnp.ones(tokens.shape, jnp.float32) if loss_mask is None else jnp.asarray(loss_mask, jnp.float32)
    fn = compiled_loss_pair(cfg, mesh, rules)
    if mesh is None:
        before, after = fn(params, params_ft, tokens, mask)
    else:
        with jax.set_mesh(mesh):
            before, after = fn(params, params_ft, tokens, mask)
    return before - after


def tree_sub(a: Any, b: Any) -> Any:
    """a - b leafwise (e.g. theta' - theta)."""
    return jax.tree.map(lambda x, y: x - y, a, b)
