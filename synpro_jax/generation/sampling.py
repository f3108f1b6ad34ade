"""Choosing the next token from logits: greedy, temperature, top-k and top-p, all traceable with dynamic knobs.

Top-k and top-p find their cut-off by binary search over float32 values instead of sorting the vocabulary (the
approach of t5x's ``binary_search.py``): 32 masked reductions over [B, V] find the exact threshold, which is
cheaper than a sort of a 100k vocabulary on TPU (and ~7x cheaper than ``jnp.sort`` on CPU at [32, 4096]) and
lets k and p be traced values, so changing them does not recompile. Ties at the threshold are kept, as in HF's
warpers.

The draw itself inverts the CDF of the filtered distribution in vocabulary order: one uniform number per row and
one cumulative sum, where a Gumbel-max draw (``jax.random.categorical``) needs a random number and two logs per
vocabulary entry (on CPU at [32, 4096]: 0.5 ms against 2.4 ms, a sixth of a small model's decode step).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def _sortable(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (the radix-sort trick: flip all bits of negatives, the sign bit of
    the rest)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _unsortable(key: jax.Array) -> jax.Array:
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def largest_threshold(values: jax.Array, holds: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Per row of values [B, V]: the largest float32 t such that ``holds(values >= t)`` is true.

    ``holds`` maps a keep-mask [B, V] to a bool [B]; it must hold for the all-true mask and be monotone (a
    larger threshold keeps fewer entries). The search runs over the uint32 images of floats, so after 32
    halvings the threshold is exact: it equals one of the row's values. Each halving is one fused pass (compare
    and reduce): the all-true case is decided on the bounds, not by another reduction over the row.
    """
    keys = _sortable(values)  # compared as keys, not floats: exact for -0.0 and for denormals (flushed on CPU)
    lowest = jnp.min(keys, axis=-1)  # keeps everything: holds
    hi = jnp.max(keys, axis=-1) + 1  # keeps nothing

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = (mid <= lowest) | holds(keys >= mid[:, None])
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lowest, hi))
    return _unsortable(lo)


def top_k_mask(logits: jax.Array, k: jax.Array) -> jax.Array:
    """Logits with everything below the k-th largest value set to -inf (ties with it are kept). k >= 1."""
    k = jnp.asarray(k, jnp.int32)
    threshold = largest_threshold(logits, lambda keep: jnp.sum(keep, axis=-1) >= k)
    return jnp.where(logits >= threshold[:, None], logits, _NEG_INF)


def top_p_mask(logits: jax.Array, p: jax.Array) -> jax.Array:
    """Keep the most likely tokens whose probabilities first add up to at least p (nucleus); -inf elsewhere."""
    probs = jax.nn.softmax(logits, axis=-1)
    p = jnp.asarray(p, jnp.float32)

    def holds(keep):  # (keeping everything qualifies whatever float32 rounding does to the total: see above)
        return jnp.sum(jnp.where(keep, probs, 0.0), axis=-1) >= p

    threshold = largest_threshold(logits, holds)
    return jnp.where(logits >= threshold[:, None], logits, _NEG_INF)


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """The distribution sampling draws from, as logits: logits / T, then top-k (k <= 0: off), then top-p on the
    renormalised survivors (p >= 1: off) -- HF's warper order. Filters are skipped at run time when off."""
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    scaled = jax.lax.cond(top_k > 0, top_k_mask, lambda x, _: x, scaled, top_k)
    return jax.lax.cond(top_p < 1.0, top_p_mask, lambda x, _: x, scaled, top_p)


def inverse_cdf_draw(keys: jax.Array, logits: jax.Array, fallback: jax.Array | None = None) -> jax.Array:
    """One token per row from softmax(logits) [B, V] (-inf entries never drawn), with one key per row.
    ``fallback`` [B] is a token of positive mass per row (default: the argmax); see :func:`invert_cdf`."""
    mass = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    if fallback is None:
        fallback = jnp.argmax(logits, axis=-1)
    return invert_cdf(mass, jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys), fallback)


def invert_cdf(mass: jax.Array, u: jax.Array, fallback: jax.Array) -> jax.Array:
    """The token [B] at fraction u [B] in [0, 1) of the running mass [B, V] (unnormalised, >= 0): the first
    index whose running mass exceeds u * total, so a token without mass is never chosen.

    A parallel cumulative sum is not exactly monotone in float32, so next to a zero-mass token the count can land
    on it (about once in 1e7 draws); such a row, or one whose count runs off the end, takes ``fallback`` (a
    token with mass) instead.
    """
    v = mass.shape[-1]
    cdf = jnp.cumsum(mass, axis=-1)
    index = jnp.minimum(jnp.sum(cdf <= (u * cdf[:, -1])[:, None], axis=-1), v - 1).astype(jnp.int32)
    # the chosen token's mass, as a masked sum (a gather costs more here)
    has_mass = jnp.sum(jnp.where(jnp.arange(v) == index[:, None], mass, 0.0), axis=-1) > 0
    return jnp.where(has_mass, index, fallback.astype(jnp.int32))


def choose_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Next tokens [B] and their log-probs [B] from float32 logits [B, V] and one PRNG key per row.

    temperature 0 is greedy (argmax). The log-prob is that of the chosen token under softmax(logits / T),
    before top-k/top-p truncation (T = 1 for greedy): the quantity a policy-gradient learner recomputes.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    logp = jax.nn.log_softmax(logits / jnp.where(temperature > 0, temperature, 1.0), axis=-1)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(_):
        filtered = filter_logits(logits, temperature, jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32))
        return inverse_cdf_draw(keys, filtered, greedy)  # truncation keeps the argmax

    tokens = jax.lax.cond(temperature > 0, draw, lambda _: greedy, None)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
