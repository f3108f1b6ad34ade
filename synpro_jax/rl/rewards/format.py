"""``format``: 1 when the completion holds exactly one known heading, else 0.

Headings of both operations are counted (``prompts.parse_answer``), as the release counts every known heading: a
completion that repeats its heading, or also writes the other operation's, gets 0.
"""

from __future__ import annotations

import numpy as np

from synpro_jax.generation.prompts import parse_answer
from synpro_jax.rl.rewards.base import RewardInputs, register_reward
from synpro_jax.rl.rewards.common import check_texts


@register_reward("format")
class FormatReward:
    name = "format"

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        check_texts(inputs)
        return np.array([parse_answer(c, inputs.operation).headings == 1 for c in inputs.completions], np.float32)
