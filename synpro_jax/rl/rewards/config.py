"""The reward suite from gin: a validated :class:`RewardsConfig` (weights per reward family, which registered
variant computes each family, fallbacks, per-reward options) and :func:`build_suite`.

Weights are keyed by family (``quality``); ``variants`` says which registered reward computes it (by default
the local one, ``quality_local``; the remote judges register their own names, ``quality_remote``, and so do the
same judges run in process on the mesh, ``quality_judge``). Rewards that need runtime objects (the influence
``scorer``, the similarity ``embedder``, the in-process ``judges``) get them from :func:`build_suite`'s keyword
arguments, passed to each factory that names a parameter of that name.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import inspect
from typing import Any

import gin

from synpro_jax.rl.rewards.base import (
    NORMALIZATIONS,
    OPERATIONS,
    RewardSuite,
    make_reward,
    registered_rewards,
    reward_factory,
)

FAMILIES = ("format", "length", "data_influence", "quality", "similarity", "structure", "faithfulness")
LOCAL_VARIANTS = {
    "format": "format",
    "length": "length",
    "data_influence": "data_influence",
    "quality": "quality_local",
    "similarity": "similarity_local",
    "structure": "structure_local",
    "faithfulness": "faithfulness_lexical",
}


@dataclasses.dataclass(frozen=True)
class RewardsConfig:
    """``weights``: family -> weight (families left out are off). ``variants``: family -> registered reward name,
    over the local defaults. ``fallbacks``: family -> value used (and counted) when the reward raises
    RewardError; a family without one fails the step. ``options``: family -> keyword arguments of its factory.
    ``normalize``: "none" (TRL's weighted sum of raw rewards, the release's) or "group" (each reward standardized
    within its prompt group before weighting; see ``RewardSuite``)."""

    operation: str = "rephrase"
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    variants: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fallbacks: Mapping[str, float] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    normalize: str = "none"

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"RewardsConfig.normalize={self.normalize!r}: one of {NORMALIZATIONS}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"RewardsConfig.operation={self.operation!r}: one of {OPERATIONS}")
        if not self.weights:
            raise ValueError("RewardsConfig.weights is empty: give each reward family its weight")
        for knob in ("weights", "variants", "fallbacks", "options"):
            unknown = sorted(set(getattr(self, knob)) - set(FAMILIES))
            if unknown:
                raise ValueError(f"RewardsConfig.{knob} names unknown families {unknown}; families: {FAMILIES}")
        for knob in ("variants", "fallbacks", "options"):
            off = sorted(set(getattr(self, knob)) - set(self.weights))
            if off:
                raise ValueError(f"RewardsConfig.{knob} names {off}, which have no weight in RewardsConfig.weights")
        for fam, w in self.weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w != w:
                raise ValueError(f"RewardsConfig.weights[{fam!r}]={w!r}: must be a number")
        for fam, v in self.fallbacks.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
                raise ValueError(f"RewardsConfig.fallbacks[{fam!r}]={v!r}: must be a number")

    def variant(self, family: str) -> str:
        return self.variants.get(family, LOCAL_VARIANTS[family])


def _accepts(factory, name: str) -> bool:
    """Whether ``factory`` names a parameter ``name`` (a ``**kwargs`` does not count: the remote judges pass theirs
    to the HTTP client, which takes no scorer, embedder or judge models)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params and params[name].kind != inspect.Parameter.VAR_KEYWORD


def build_suite(config: RewardsConfig, **runtime) -> RewardSuite:
    """The weighted suite ``config`` describes, keyed by family. ``runtime`` objects (scorer=..., embedder=...)
    go to every factory with a parameter of that name."""
    rewards = {}
    for family in config.weights:
        name = config.variant(family)
        if name not in registered_rewards():
            raise ValueError(
                f"RewardsConfig.variants[{family!r}]={name!r} is not a registered reward; registered: "
                f"{registered_rewards()}"
            )
        factory = reward_factory(name)
        kwargs = {k: v for k, v in runtime.items() if _accepts(factory, k)}
        kwargs.update(config.options.get(family, {}))
        try:
            rewards[family] = make_reward(name, **kwargs)
        except TypeError as e:
            raise ValueError(f"RewardsConfig.options[{family!r}]: {name} does not take these options ({e})") from e
    return RewardSuite(
        rewards,
        {f: float(w) for f, w in config.weights.items()},
        {f: float(v) for f, v in config.fallbacks.items()},
        normalize=config.normalize,
    )


try:
    gin.external_configurable(RewardsConfig, name="RewardsConfig", module="synpro")
except ValueError:  # already registered in this process
    pass
