"""GRPO's math as pure jnp functions: advantages, the clipped-ratio policy loss, KL estimators and loss aggregation.

Shapes: ``rewards`` and ``advantages`` are ``[N]`` with the G completions of one prompt contiguous (row ``i`` belongs
to group ``i // G``); per-token arrays (``logp``, ``old_logp``, ``ref_logp``, ``completion_mask``) are ``[N, T]``
over the completion tokens, and ``logp[i, t]`` is the log-probability of completion token ``t`` of row ``i``.

Every loss comes back as a ``(sum, denominator)`` pair. The denominators depend on the masks only, never on the
parameters, so a learner that splits a batch into micro-batches (or hosts) adds the pairs up (:func:`combine`) and
divides once (:func:`finalize`): the result, and its gradient, equal the whole batch's exactly. A row whose mask is
all zero (padding; a real completion always has at least its EOS token) adds nothing to any sum or denominator.

Advantage estimators and policy losses are registered by name (:func:`register_advantage`,
:func:`register_policy_loss`), and :class:`~synpro_jax.rl.config.GRPOConfig` picks them with
``advantage_estimator`` and ``policy_loss_fn``. Dr. GRPO is ``scale_rewards="none"`` with
``loss_agg_mode="sequence-sum-fixed-length"``; RLOO is ``advantage_estimator="rloo"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from synpro_jax.registry import Registry
from synpro_jax.rl.config import KL_LOSS_MODES, LOSS_AGG_MODES, SCALE_REWARDS, GRPOConfig

Pair = tuple[jax.Array, jax.Array]  # (sum, denominator)


def _float(x) -> jax.Array:
    """At least float32; float64 stays float64 (tests compare under x64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# --------------------------------------------------------------------------------------------------- advantages

AdvantageFn = Callable[..., jax.Array]  # (rewards [N], num_generations, *, scale_rewards, eps, ddof) -> [N]
_ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


def register_advantage(name: str):
    """Register ``fn(rewards, num_generations, *, scale_rewards, eps, ddof) -> advantages`` under ``name``."""
    return _ADVANTAGES.register(name)


def registered_advantages() -> list[str]:
    return _ADVANTAGES.names()


def _groups(rewards, num_generations: int) -> jax.Array:
    r = _float(rewards)
    if r.ndim != 1 or r.shape[0] % num_generations:
        raise ValueError(
            f"rewards of shape {r.shape}: need [N] with N a multiple of num_generations="
            f"{num_generations} (the G completions of a prompt contiguous)"
        )
    return r.reshape(-1, num_generations)


def _std(x: jax.Array, ddof: int, axis=None) -> jax.Array:
    n = x.size if axis is None else x.shape[axis]
    if n - ddof <= 0:
        return jnp.zeros_like(jnp.mean(x, axis=axis, keepdims=axis is not None))
    return jnp.std(x, axis=axis, ddof=ddof, keepdims=axis is not None)


@register_advantage("grpo")
def group_advantages(
    rewards, num_generations: int, *, scale_rewards: str = "group", eps: float = 1e-4, ddof: int = 1
) -> jax.Array:
    """(r - mean_G) / (std + eps). ``scale_rewards``: "group" (std over the G completions of the prompt), "batch"
    (std over all N rewards, PPO-Lite style) or "none" (no division, Dr. GRPO). ``ddof=1`` is TRL's unbiased std.
    A group whose rewards are all equal gets exactly zero advantage (no rounding residue from the mean)."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r}: choose one of {SCALE_REWARDS}")
    g = _groups(rewards, num_generations)
    adv = g - jnp.mean(g, axis=1, keepdims=True)
    if scale_rewards == "group":
        adv = adv / (_std(g, ddof, axis=1) + eps)
    elif scale_rewards == "batch":
        adv = adv / (_std(g, ddof) + eps)
    flat = jnp.max(g, axis=1, keepdims=True) == jnp.min(g, axis=1, keepdims=True)
    return jnp.where(flat, 0.0, adv).reshape(-1)


@register_advantage("rloo")
def rloo_advantages(
    rewards, num_generations: int, *, scale_rewards: str = "none", eps: float = 1e-4, ddof: int = 1
) -> jax.Array:
    """REINFORCE leave-one-out: r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_G), unscaled."""
    del eps, ddof
    if scale_rewards != "none":
        raise ValueError(f"scale_rewards={scale_rewards!r}: RLOO is not std-scaled; use scale_rewards='none'")
    g = _groups(rewards, num_generations)
    if num_generations < 2:
        raise ValueError("RLOO needs num_generations >= 2")
    others = (jnp.sum(g, axis=1, keepdims=True) - g) / (num_generations - 1)
    flat = jnp.max(g, axis=1, keepdims=True) == jnp.min(g, axis=1, keepdims=True)
    return jnp.where(flat, 0.0, g - others).reshape(-1)


def compute_advantages(rewards, cfg: GRPOConfig, ddof: int = 1) -> jax.Array:
    """The configured estimator on the weighted reward total of each completion ([N], groups contiguous). Pass
    the rewards of the whole step (all hosts): "batch" scaling takes its std over everything it is given."""
    estimator = _ADVANTAGES.get(cfg.advantage_estimator)
    return estimator(rewards, cfg.num_generations, scale_rewards=cfg.scale_rewards, eps=cfg.advantage_eps, ddof=ddof)


# ------------------------------------------------------------------------------------------------- KL estimators


def kl_per_token(logp, ref_logp, mode: str = "k3") -> jax.Array:
    """Per-token estimators of KL(pi || ref) from samples of pi (Schulman's k1, k2, k3), d = logp - ref_logp:
    k1 = d, k2 = d^2 / 2, k3 = exp(-d) + d - 1 (unbiased, >= 0; TRL's and tunix's "low_var_kl")."""
    d = _float(logp) - _float(ref_logp)
    if mode == "k1":
        return d
    if mode == "k2":
        return 0.5 * d * d
    if mode == "k3":
        return jnp.exp(-d) + d - 1.0
    raise ValueError(f"kl_loss_mode={mode!r}: choose one of {KL_LOSS_MODES}")


# ------------------------------------------------------------------------------------------------- policy losses

PolicyLossFn = Callable[..., tuple[jax.Array, jax.Array]]
_POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


def register_policy_loss(name: str):
    """Register ``fn(logp, old_logp, advantages [N], cfg) -> (per_token_loss [N, T], clipped [N, T] bool)``."""
    return _POLICY_LOSSES.register(name)


def registered_policy_losses() -> list[str]:
    return _POLICY_LOSSES.names()


def clipped_policy_loss(
    logp, old_logp, advantages, epsilon: float = 0.2, epsilon_high: float | None = None
) -> tuple[jax.Array, jax.Array]:
    """PPO's clipped surrogate per token: -min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A), with
    rho = exp(logp - old_logp) (old_logp carries no gradient). ``clipped`` marks the tokens where the clipped term
    is the active one (rho < 1 - epsilon with A < 0, or rho > 1 + epsilon_high with A > 0), i.e. no gradient."""
    eps_hi = epsilon if epsilon_high is None else epsilon_high
    adv = _float(advantages)[:, None]
    ratio = jnp.exp(_float(logp) - jax.lax.stop_gradient(_float(old_logp)))
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_hi)
    loss = -jnp.minimum(ratio * adv, clipped_ratio * adv)
    clipped = ((ratio < 1.0 - epsilon) & (adv < 0)) | ((ratio > 1.0 + eps_hi) & (adv > 0))
    return loss, clipped


@register_policy_loss("grpo")
def _grpo_policy_loss(logp, old_logp, advantages, cfg: GRPOConfig):
    return clipped_policy_loss(logp, old_logp, advantages, cfg.epsilon, cfg.epsilon_high)


# --------------------------------------------------------------------------------------------------- aggregation


def aggregate(per_token, completion_mask, mode: str = "token-mean", max_len: int | None = None) -> Pair:
    """(sum, denominator) of a per-token quantity under ``mode``; the loss is sum / denominator after combining.

    - "token-mean": sum over active tokens / number of active tokens (TRL's "dapo", tunix's "token-mean").
    - "sequence-mean-token-mean": each sequence's token mean, averaged over sequences (TRL's "grpo").
    - "sequence-sum-fixed-length": each sequence's token sum / ``max_len``, averaged over sequences (Dr. GRPO,
      TRL's "dr_grpo" with max_len = max_completion_length).
    Rows with an all-zero mask add to neither part.
    """
    m = jnp.asarray(completion_mask).astype(bool)
    x = jnp.where(m, _float(per_token), 0.0)
    mf = m.astype(x.dtype)
    tokens = jnp.sum(mf, axis=-1)
    rows = jnp.sum((tokens > 0).astype(x.dtype))
    if mode == "token-mean":
        return jnp.sum(x), jnp.sum(tokens)
    if mode == "sequence-mean-token-mean":
        return jnp.sum(jnp.sum(x, axis=-1) / jnp.maximum(tokens, 1.0)), rows
    if mode == "sequence-sum-fixed-length":
        if max_len is None or max_len < 1:
            raise ValueError(
                f"loss_agg_mode='sequence-sum-fixed-length' needs max_len >= 1 (GRPOConfig."
                f"max_completion_tokens); got {max_len!r}"
            )
        return jnp.sum(x), rows * max_len
    raise ValueError(f"loss_agg_mode={mode!r}: choose one of {LOSS_AGG_MODES}")


def loss_denominator(completion_mask, cfg: GRPOConfig) -> jax.Array:
    """The loss's denominator for these rows (masks only): sum it over the accumulated batch and hosts to scale
    each micro-batch's loss sum before taking gradients."""
    return aggregate(
        jnp.zeros(jnp.shape(completion_mask), jnp.float32),
        completion_mask,
        cfg.loss_agg_mode,
        cfg.max_completion_tokens,
    )[1]


# ------------------------------------------------------------------------------------------------------ the loss


def grpo_loss_terms(logp, old_logp, ref_logp, advantages, completion_mask, cfg: GRPOConfig) -> dict[str, Pair]:
    """GRPO's loss and metrics for one (micro-)batch, each as (sum, denominator).

    ``logp`` and ``old_logp`` must come from the same sampling distribution (logits / temperature, as TRL does).
    ``old_logp`` None means on-policy (num_iterations 1): the ratio is exp(logp - stop_gradient(logp)) = 1, which
    still carries the policy gradient. ``ref_logp`` may be None only when ``cfg.beta == 0``.

    With ``cfg.kl_bias_correction`` (TRL 1.16's ``use_bias_correction_kl``, on by default there and here) the
    per-token KL is multiplied by the importance ratio rho = exp(logp - stop_gradient(old_logp)), unclipped, as TRL
    does: rho is 1 on-policy, but its gradient is not zero, so the KL term's gradient becomes
    d(kl)/dlogp + kl, which for k3 is logp - ref_logp (the unbiased reverse-KL gradient) instead of
    1 - exp(ref_logp - logp).

    Returns ``loss`` (policy term + beta * KL per token, aggregated by ``cfg.loss_agg_mode``), ``policy_loss``
    (same aggregation, no KL), and token means over the active tokens: ``kl`` (the ``cfg.kl_loss_mode`` estimate,
    times rho under ``kl_bias_correction`` as TRL logs it; absent when ref_logp is None) and ``clip_fraction``.
    """
    m = jnp.asarray(completion_mask).astype(bool)
    # Zero the masked slots first: padding log-probs may be -inf/NaN, and jnp.where alone would still send NaN
    # through the gradient of exp().
    logp = jnp.where(m, _float(logp), 0.0)
    old_logp = jax.lax.stop_gradient(logp) if old_logp is None else jnp.where(m, _float(old_logp), 0.0)
    pg, clipped = _POLICY_LOSSES.get(cfg.policy_loss_fn)(logp, old_logp, advantages, cfg)
    per_token = pg
    terms: dict[str, Pair] = {}
    tokens = jnp.sum(m.astype(pg.dtype))
    if ref_logp is not None:
        kl = kl_per_token(logp, jnp.where(m, _float(ref_logp), 0.0), cfg.kl_loss_mode)
        if cfg.kl_bias_correction:
            kl = kl * jnp.exp(logp - jax.lax.stop_gradient(old_logp))
        terms["kl"] = (jnp.sum(jnp.where(m, kl, 0.0)), tokens)
        if cfg.beta:
            per_token = pg + cfg.beta * kl
    elif cfg.beta:
        raise ValueError(f"GRPOConfig.beta={cfg.beta}: the KL term needs ref_logp (or set beta=0)")
    terms["loss"] = aggregate(per_token, m, cfg.loss_agg_mode, cfg.max_completion_tokens)
    terms["policy_loss"] = aggregate(pg, m, cfg.loss_agg_mode, cfg.max_completion_tokens)
    terms["clip_fraction"] = (jnp.sum(jnp.where(m, clipped, False).astype(pg.dtype)), tokens)
    return terms


def combine(*terms: Mapping[str, Pair]) -> dict[str, Pair]:
    """Add the (sum, denominator) pairs of several micro-batches (or hosts' partial sums)."""
    if not terms:
        raise ValueError("combine() needs at least one set of terms")
    keys = set(terms[0])
    for t in terms[1:]:
        if set(t) != keys:
            raise ValueError(f"combine(): terms with different keys {sorted(keys)} vs {sorted(t)}")
    return {k: (sum(t[k][0] for t in terms), sum(t[k][1] for t in terms)) for k in sorted(keys)}


def finalize(terms: Mapping[str, Pair]) -> dict[str, jax.Array]:
    """sum / denominator for each term; 0 where nothing was counted (an all-padding batch)."""
    return {k: jnp.where(d > 0, s / jnp.where(d > 0, d, 1), 0.0) for k, (s, d) in terms.items()}
