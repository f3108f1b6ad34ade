"""SynPro's rewards, one module per family, registered by name (see ``base.py`` for the contract).

Local variants registered here: ``format``, ``length``, ``data_influence``, ``quality_local``,
``similarity_local``, ``structure_local``, ``faithfulness_lexical``; the remote (OpenAI-compatible) judges
``quality_remote``, ``structure_remote``, ``faithfulness_remote`` (``remote.py``), and the same judges in process on
the run's mesh, ``quality_judge``, ``structure_judge``, ``faithfulness_judge`` (``judge_model.py``).
``config.RewardsConfig`` and ``config.build_suite`` turn gin's weights into a :class:`RewardSuite`.
"""

from synpro_jax.rl.rewards import (  # noqa: F401
    faithfulness,
    format,
    influence,
    judge_model,
    length,
    quality,
    remote,
    similarity,
    structure,
)
from synpro_jax.rl.rewards.base import (
    RewardError,
    RewardInputs,
    RewardSuite,
    SuiteResult,
    make_reward,
    register_reward,
    registered_rewards,
)
from synpro_jax.rl.rewards.config import FAMILIES, LOCAL_VARIANTS, RewardsConfig, build_suite

__all__ = [
    "RewardError",
    "RewardInputs",
    "RewardSuite",
    "SuiteResult",
    "make_reward",
    "register_reward",
    "registered_rewards",
    "RewardsConfig",
    "build_suite",
    "FAMILIES",
    "LOCAL_VARIANTS",
]
