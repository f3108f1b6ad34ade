"""Next-token losses, returned as sums with their denominators so micro-batches normalise exactly."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
    nll: jax.Array  # sum of token cross-entropies over unmasked tokens
    z: jax.Array  # sum of logsumexp(logits)^2 over unmasked tokens
    tokens: jax.Array  # number of unmasked tokens

    def __add__(self, other: "LossSums") -> "LossSums":  # type: ignore[override]
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
