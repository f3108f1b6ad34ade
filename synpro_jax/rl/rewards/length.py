"""``length`` (rephrase): 1 when the answer after the heading has at most ``max_ratio`` (1.25) times the source's
characters, else 0.

As in the release, a completion without a heading has an empty answer and so passes; the format reward is what
penalises the missing heading.
"""

from __future__ import annotations

import numpy as np

from synpro_jax.rl.rewards.base import RewardInputs, register_reward
from synpro_jax.rl.rewards.common import answers


@register_reward("length")
class LengthReward:
    name = "length"

    def __init__(self, max_ratio: float = 1.25):
        if not max_ratio > 0:
            raise ValueError(f"length reward max_ratio={max_ratio}: must be > 0")
        self.max_ratio = float(max_ratio)

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        texts = answers(inputs)
        return np.array([len(a) <= self.max_ratio * len(s) for a, s in zip(texts, inputs.sources)], np.float32)
