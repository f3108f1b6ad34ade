"""AdamW with warmup + constant/cosine/linear schedules, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import optax

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Defaults follow the SynPro release's pretraining runs (400M: lr 6e-4, 1000 warmup steps, constant)."""

    learning_rate: float = 6e-4
    warmup_steps: int = 1000
    schedule: str = "constant"
    total_steps: int | None = None  # needed by cosine and linear decay
    final_lr_ratio: float = 0.1  # decay floor, as a fraction of learning_rate
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0
    # The release decays norm scales too (OLMo's decay_norm_and_bias: true); embeddings never decay.
    decay_norms: bool = True

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate={self.learning_rate}: must be positive")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimizerConfig.warmup_steps={self.warmup_steps}: must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: choose one of {SCHEDULES}")
        if self.schedule != "constant":
            if self.total_steps is None or self.total_steps <= self.warmup_steps:
                raise ValueError(
                    f"OptimizerConfig.total_steps={self.total_steps}: schedule {self.schedule!r} needs "
                    f"total_steps > warmup_steps ({self.warmup_steps})"
                )
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"OptimizerConfig.final_lr_ratio={self.final_lr_ratio}: must be in [0, 1]")
        for knob in ("b1", "b2"):
            if not 0 <= getattr(self, knob) < 1:
                raise ValueError(f"OptimizerConfig.{knob}={getattr(self, knob)}: must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"OptimizerConfig.weight_decay={self.weight_decay}: must be >= 0")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"OptimizerConfig.clip_norm={self.clip_norm}: must be positive, or None to disable")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    peak = cfg.learning_rate
    warmup = optax.linear_schedule(0.0, peak, max(cfg.warmup_steps, 1))
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        decay_steps = cfg.total_steps - cfg.warmup_steps
        if cfg.schedule == "cosine":
            after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.final_lr_ratio)
        else:
            after = optax.linear_schedule(peak, peak * cfg.final_lr_ratio, decay_steps)
    if cfg.warmup_steps == 0:
        return after
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def decay_mask(params: Any, decay_norms: bool = True) -> Any:
    """True where weight decay applies: everything but the embedding table, and norm scales only if
    ``decay_norms`` (the release's ``decay_norm_and_bias``)."""

    def keep(path, _):
        keys = [str(getattr(k, "key", k)) for k in path]
        if any(k == "embedding" for k in keys):
            return False
        return decay_norms or not any(k.endswith("norm") for k in keys)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig = OptimizerConfig()) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    parts.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=functools.partial(decay_mask, decay_norms=cfg.decay_norms),
        )
    )
    return optax.chain(*parts)
