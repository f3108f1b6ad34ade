"""The GRPO run's algorithm knobs, with tunix's field names so a run here and a tunix run read side by side.

Defaults are the SynPro release's GRPO settings (``reference.md``, "GRPO settings in the release"): G = 8, beta 0.005
against the frozen starting model, lr 1e-6 with 10% linear warmup then cosine to 0.1x, temperature 1.0, top-p 0.9.

Where the release leaned on a TRL default, the default here is what TRL's ``GRPOTrainer`` does. The release pins no
TRL version; reference.md describes TRL 1.16, and every default below was checked against the source of TRL 1.16.0
(the PyPI wheel: ``trl/trainer/grpo_config.py``, ``grpo_trainer.py``, ``base_config.py`` and ``utils.py``):

- ``loss_type="dapo"`` -> ``loss_agg_mode="token-mean"``: the per-token loss (clipped policy term + beta * KL) is
  summed over the active completion tokens and divided by the number of active tokens in the whole accumulated,
  all-process batch (TRL's ``num_items_in_batch``).
- ``scale_rewards="group"``: the weighted reward sum first, then (r - mean_G) / (std_G + 1e-4), where std_G is the
  unbiased (Bessel-corrected, ddof=1) std over the G completions of one prompt (TRL's ``nanstd``). ``"batch"``
  keeps the group mean but divides by the std of the whole batch; ``"none"`` only subtracts the group mean.
- ``epsilon=0.2`` with ``epsilon_high`` equal to it, ``num_iterations=1``, token-level importance ratios
  (``importance_sampling_level="token"``).
- with ``beta > 0`` the KL term is the k3 estimator exp(ref - logp) - (ref - logp) - 1, added per token before
  aggregation. (TRL's own ``beta`` default is 0.0; the release set 0.005.)
- ``use_bias_correction_kl=True`` -> ``kl_bias_correction=True``: the per-token KL is multiplied by the unclipped
  importance ratio exp(logp - old_logp), old_logp detached. On-policy the ratio is 1 but its gradient is not zero,
  so the KL gradient per token is logp - ref (the unbiased reverse-KL gradient of DeepSeek-V3.2) instead of k3's
  own 1 - exp(ref - logp). ``kl_bias_correction=False`` is the plain k3 term (what this module did before the knob
  was added).
- ``num_generations=8``, ``learning_rate=1e-6`` and ``temperature=1.0`` are TRL's defaults as well as the
  release's.
- the optimizer is the HF Trainer's AdamW, which TRL does not override: betas (0.9, 0.999), eps 1e-8, weight decay
  0.0, grad-norm clip 1.0 (see :meth:`GRPOConfig.optimizer_config`).

Defaults here that are the release's and not TRL 1.16's: ``beta`` (TRL 0.0), ``top_p`` 0.9 (TRL 1.0),
``max_completion_tokens`` 2048 (TRL ``max_completion_length`` 512; TRL 1.16 has no prompt-length limit), and the
schedule (TRL: HF's linear decay, no warmup; here 10% warmup, cosine to 0.1x).
"""

from __future__ import annotations

import dataclasses
import math

from synpro_jax.train.optimizer import OptimizerConfig

KL_LOSS_MODES = ("k1", "k2", "k3")
LOSS_AGG_MODES = ("token-mean", "sequence-mean-token-mean", "sequence-sum-fixed-length")
SCALE_REWARDS = ("group", "batch", "none")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO's algorithm knobs (gin: ``synpro.GRPOConfig``). Field names follow tunix's ``GRPOConfig``."""

    num_generations: int = 8  # G: completions per prompt
    num_iterations: int = 1  # mu: policy updates per batch of rollouts
    beta: float = 0.005  # KL coefficient against the frozen reference; 0 disables the KL term
    epsilon: float = 0.2  # lower clip: ratio >= 1 - epsilon
    epsilon_high: float | None = None  # upper clip: ratio <= 1 + epsilon_high; None = epsilon (DAPO uses 0.28)
    kl_loss_mode: str = "k3"  # k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 = exp(ref - logp) - (ref - logp) - 1
    # TRL 1.16's use_bias_correction_kl (default True there): multiply the per-token KL by the importance ratio
    # exp(logp - sg(old_logp)), so its gradient is the unbiased reverse-KL one even on-policy. False = plain KL term.
    kl_bias_correction: bool = True
    loss_agg_mode: str = "token-mean"
    advantage_estimator: str = "grpo"  # a name in grpo.registered_advantages()
    policy_loss_fn: str = "grpo"  # a name in grpo.registered_policy_losses()
    scale_rewards: str = "group"
    advantage_eps: float = 1e-4  # added to the std in the advantage denominator (TRL's constant)
    learning_rate: float = 1e-6
    warmup_ratio: float = 0.1  # share of the total steps spent in linear warmup
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of learning_rate
    temperature: float = 1.0
    top_p: float = 0.9
    max_prompt_tokens: int = 2048
    max_completion_tokens: int = 2048  # also the fixed length of "sequence-sum-fixed-length" (Dr. GRPO)

    def __post_init__(self):
        def bad(knob, why):
            raise ValueError(f"GRPOConfig.{knob}={getattr(self, knob)!r}: {why}")

        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            bad("num_generations", "must be an int >= 2 (a group needs two completions to have a baseline)")
        if not isinstance(self.num_iterations, int) or self.num_iterations < 1:
            bad("num_iterations", "must be an int >= 1")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            bad("beta", "must be finite and >= 0")
        if not 0 < self.epsilon < 1:
            bad("epsilon", "must be in (0, 1)")
        if self.epsilon_high is None:
            object.__setattr__(self, "epsilon_high", self.epsilon)
        elif not (math.isfinite(self.epsilon_high) and self.epsilon_high > 0):
            bad("epsilon_high", "must be positive, or None to use epsilon")
        if not isinstance(self.kl_bias_correction, bool):
            bad("kl_bias_correction", "must be a bool (TRL 1.16's use_bias_correction_kl)")
        if self.kl_loss_mode not in KL_LOSS_MODES:
            bad("kl_loss_mode", f"choose one of {KL_LOSS_MODES}")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            bad("loss_agg_mode", f"choose one of {LOSS_AGG_MODES}")
        if self.scale_rewards not in SCALE_REWARDS:
            bad("scale_rewards", f"choose one of {SCALE_REWARDS}")
        from synpro_jax.rl import grpo  # import cycle: grpo.py, whose registries these are, imports this module

        if self.advantage_estimator not in grpo.registered_advantages():
            bad("advantage_estimator", f"registered: {grpo.registered_advantages()}")
        if self.policy_loss_fn not in grpo.registered_policy_losses():
            bad("policy_loss_fn", f"registered: {grpo.registered_policy_losses()}")
        if self.advantage_estimator == "rloo" and self.scale_rewards != "none":
            bad(
                "scale_rewards",
                "RLOO's leave-one-out baseline is not std-scaled; set scale_rewards='none' "
                "with advantage_estimator='rloo'",
            )
        if not (math.isfinite(self.advantage_eps) and self.advantage_eps > 0):
            bad("advantage_eps", "must be positive (it keeps a zero-std group finite)")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            bad("learning_rate", "must be positive")
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", "must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", "must be in [0, 1]")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            bad("temperature", "must be positive")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        for knob in ("max_prompt_tokens", "max_completion_tokens"):
            if not isinstance(getattr(self, knob), int) or getattr(self, knob) < 1:
                bad(knob, "must be an int >= 1")

    def warmup_steps(self, total_steps: int) -> int:
        return int(round(self.warmup_ratio * total_steps))

    def optimizer_config(self, total_steps: int, **overrides):
        """The release's optimizer for ``total_steps`` updates: HF Trainer AdamW (0.9, 0.999), eps 1e-8, no weight
        decay, clip 1.0; ``learning_rate`` with ``warmup_ratio`` linear warmup, then cosine to ``min_lr_ratio``."""
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"GRPO total_steps={total_steps!r}: must be an int >= 1")
        warmup = self.warmup_steps(total_steps)
        if warmup >= total_steps:
            raise ValueError(
                f"GRPOConfig.warmup_ratio={self.warmup_ratio}: {warmup} warmup steps leave no decay "
                f"in {total_steps} total steps"
            )
        kw = dict(
            learning_rate=self.learning_rate,
            warmup_steps=warmup,
            schedule="cosine",
            total_steps=total_steps,
            final_lr_ratio=self.min_lr_ratio,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            clip_norm=1.0,
        )
        kw.update(overrides)
        return OptimizerConfig(**kw)
