"""Next-token losses, returned as sums with their denominators so micro-batches normalise exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
    nll: jax.Array  # sum of token cross-entropies over unmasked tokens
    z: jax.Array  # sum of logsumexp(logits)^2 over unmasked tokens
    tokens: jax.Array  # number of unmasked tokens

    def __add__(self, other: LossSums) -> LossSums:  # type: ignore[override]
        return LossSums(self.nll + other.nll, self.z + other.z, self.tokens + other.tokens)

    def loss(self, z_loss: float = 0.0) -> jax.Array:
        """Mean cross-entropy plus ``z_loss`` times the mean squared log-partition."""
        denom = jnp.maximum(self.tokens, 1.0)
        return (self.nll + z_loss * self.z) / denom


def token_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy and log-partition, both [B, T] float32."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - target_logit, lse


def loss_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array | None = None) -> LossSums:
    nll, lse = token_nll(logits, targets)
    mask = jnp.ones_like(nll) if loss_mask is None else loss_mask.astype(jnp.float32)
    return LossSums(jnp.sum(nll * mask), jnp.sum(jnp.square(lse) * mask), jnp.sum(mask))


def per_example_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array | None = None) -> jax.Array:
    """Mean token cross-entropy of each row, [B] float32 (0 for a row with no unmasked token)."""
    nll, _ = token_nll(logits, targets)
    mask = jnp.ones_like(nll) if loss_mask is None else loss_mask.astype(jnp.float32)
    return jnp.sum(nll * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def chunked_loss_sums(
    logits_fn: Callable[[jax.Array], jax.Array],
    hidden: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array | None = None,
    *,
    chunk: int,
) -> LossSums:
    """:func:`loss_sums` of ``logits_fn(hidden)`` without ever holding the [B, T, V] logits.

    The sequence is scanned ``chunk`` positions at a time (padded with masked positions to a multiple of it).
    Each chunk's float32 logits live only inside a rematerialised scan body, so the backward pass recomputes
    them chunk by chunk too: peak logits memory is [B, chunk, V] instead of [B, T, V], and the batch keeps its
    sharding. ``logits_fn`` maps hidden states [B, c, D] to logits [B, c, V].
    """
    if chunk < 1:
        raise ValueError(f"chunked_loss_sums: chunk={chunk} must be >= 1")
    b, t = targets.shape
    mask = jnp.ones((b, t), jnp.float32) if loss_mask is None else loss_mask.astype(jnp.float32)
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))

    def split(x):  # [B, n*c, ...] -> [n, B, c, ...]
        return x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)

    @jax.checkpoint
    def one(h, y, m):
        nll, lse = token_nll(logits_fn(h), y)
        return LossSums(jnp.sum(nll * m), jnp.sum(jnp.square(lse) * m), jnp.sum(m))

    def body(acc, xs):
        return acc + one(*xs), None

    zero = LossSums(jnp.float32(0), jnp.float32(0), jnp.float32(0))
    sums, _ = jax.lax.scan(body, zero, (split(hidden), split(targets), split(mask)))
    return sums
