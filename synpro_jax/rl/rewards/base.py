"""What every reward sees and returns, the registry of rewards by name, and the weighted suite.

A reward maps a batch of completions (with their sources) to one float per completion. It raises
:class:`RewardError` when it cannot compute a value; the suite then applies the reward's configured fallback (and
counts it) or fails the step. A failure never turns into a silent 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import logging
from typing import Protocol

import numpy as np

from synpro_jax.registry import Registry

log = logging.getLogger(__name__)

OPERATIONS = ("rephrase", "reformat")


class RewardError(RuntimeError):
    """A reward could not be computed (a judge unreachable, an unparseable reply, ...)."""


@dataclasses.dataclass(frozen=True)
class RewardInputs:
    """One batch of rollouts: completion ``i`` answers prompt ``group[i]`` about ``sources[i]``."""

    operation: str  # "rephrase" or "reformat"
    sources: Sequence[str]  # the organic document each completion rewrites (repeated over its group)
    completions: Sequence[str]  # the decoded completion text
    group: np.ndarray  # [N] int: the prompt (group) index of each completion

    def __post_init__(self):
        if self.operation not in OPERATIONS:
            raise ValueError(f"RewardInputs.operation={self.operation!r}: one of {OPERATIONS}")
        n = len(self.completions)
        if len(self.sources) != n or len(self.group) != n:
            raise ValueError(
                f"RewardInputs: {n} completions but {len(self.sources)} sources and {len(self.group)} group ids"
            )

    def __len__(self) -> int:
        return len(self.completions)


class Reward(Protocol):
    name: str

    def __call__(self, inputs: RewardInputs) -> np.ndarray:  # [N] float32
        ...


_REGISTRY: Registry[Callable[..., Reward]] = Registry("reward")


def register_reward(name: str):
    """Register a reward factory (a class or function returning a Reward) under ``name``."""
    return _REGISTRY.register(name)


def reward_factory(name: str) -> Callable[..., Reward]:
    """The factory registered under ``name`` (to inspect what it takes before building it)."""
    return _REGISTRY.get(name)


def make_reward(name: str, **kwargs) -> Reward:
    return reward_factory(name)(**kwargs)


def registered_rewards() -> list[str]:
    return _REGISTRY.names()


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    values: dict[str, np.ndarray]  # per reward, [N] float32 (after any fallback)
    total: np.ndarray  # [N] float32: the weighted sum (of the group-normalized rewards under normalize="group")
    failures: dict[str, int]  # per reward: completions whose value is a fallback


NORMALIZATIONS = ("none", "group")
GROUP_EPS = 1e-4  # as GRPO's advantage denominator (TRL's constant)


def group_normalize(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``(r - mean) / (std + 1e-4)`` within each prompt group, the std unbiased (ddof=1) as GRPO's advantage
    takes it; a constant group, or a group of one, is 0."""
    values = np.asarray(values, np.float64)
    out = np.zeros_like(values)
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        v = values[rows]
        std = v.std(ddof=1) if len(v) > 1 else 0.0
        out[rows] = 0.0 if std == 0.0 else (v - v.mean()) / (std + GROUP_EPS)
    return out


class RewardSuite:
    """Rewards with weights; ``fallbacks[name]`` (a float) replaces a reward that raised :class:`RewardError`,
    counted in ``failures``. A reward without a fallback that fails fails the step, naming the reward.

    ``normalize``: ``"none"`` (default, TRL's): the total is the weighted sum of the raw rewards, so a reward's
    say in the advantage grows with its spread; ``"group"``: each reward is first standardized within its prompt
    group (:func:`group_normalize`), so the weights alone set each reward's share of the signal, whatever its
    scale (a reward whose values within a group differ by 0.01, like data_influence, is otherwise drowned by a
    0/1 reward)."""

    def __init__(
        self,
        rewards: Mapping[str, Reward],
        weights: Mapping[str, float],
        fallbacks: Mapping[str, float] | None = None,
        normalize: str = "none",
    ):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"reward normalize={normalize!r}: one of {NORMALIZATIONS}")
        self.normalize = normalize
        missing = sorted(set(rewards) ^ set(weights))
        if missing:
            raise ValueError(f"reward weights and rewards differ on {missing}")
        unknown = sorted(set(fallbacks or {}) - set(rewards))
        if unknown:
            raise ValueError(f"fallbacks name rewards that are not in the suite: {unknown}")
        self.rewards, self.weights, self.fallbacks = dict(rewards), dict(weights), dict(fallbacks or {})

    def __call__(self, inputs: RewardInputs) -> SuiteResult:
        values, failures = {}, {}
        n = len(inputs)
        for name, reward in self.rewards.items():
            try:
                v = np.asarray(reward(inputs), np.float32)
                if v.shape != (n,) or not np.all(np.isfinite(v)):
                    raise RewardError(
                        f"returned shape {v.shape} with non-finite values"
                        if v.shape == (n,)
                        else f"returned shape {v.shape}, expected ({n},)"
                    )
                failures[name] = 0
            except RewardError as e:
                if name not in self.fallbacks:
                    raise RewardError(f"reward {name!r} failed and has no fallback: {e}") from e
                log.warning(
                    "reward %s failed (%s); using its fallback %s for %d completions", name, e, self.fallbacks[name], n
                )
                v = np.full(n, self.fallbacks[name], np.float32)
                failures[name] = n
            values[name] = v
        total = np.zeros(n, np.float32)
        for name, v in values.items():
            if self.normalize == "group":
                v = group_normalize(v, np.asarray(inputs.group)).astype(np.float32)
            total += np.float32(self.weights[name]) * v
        return SuiteResult(values, total, failures)
