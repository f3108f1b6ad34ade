"""SynPro's rewards, one module per family, registered by name (see ``base.py`` for the contract).

Local variants registered here: ``format``, ``length``, ``data_influence``, ``quality_local``,
``similarity_local``, ``structure_local``, ``faithfulness_lexical``. ``config.RewardsConfig`` and
``config.build_suite`` turn gin's weights into a :class:`RewardSuite`.
"""

import importlib.util

from synpro_jax.rl.rewards.base import (RewardError, RewardInputs, RewardSuite, SuiteResult, make_reward,
                                        register_reward, registered_rewards)
from synpro_jax.rl.rewards import (faithfulness, format, influence, length, quality, similarity,  # noqa: F401
                                   structure)
from synpro_jax.rl.rewards.config import FAMILIES, LOCAL_VARIANTS, RewardsConfig, build_suite

# The remote (OpenAI-compatible) judges live in remote.py, written alongside; registered whenever it is present.
if importlib.util.find_spec("synpro_jax.rl.rewards.remote") is not None:
    from synpro_jax.rl.rewards import remote  # noqa: F401

__all__ = ["RewardError", "RewardInputs", "RewardSuite", "SuiteResult", "make_reward", "register_reward",
           "registered_rewards", "RewardsConfig", "build_suite", "FAMILIES", "LOCAL_VARIANTS"]
