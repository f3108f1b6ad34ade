"""SynPro's rewards, one module per family, registered by name (see ``base.py`` for the contract)."""

from synpro_jax.rl.rewards.base import (RewardError, RewardInputs, RewardSuite, SuiteResult, make_reward,
                                        register_reward, registered_rewards)

__all__ = ["RewardError", "RewardInputs", "RewardSuite", "SuiteResult", "make_reward", "register_reward",
           "registered_rewards"]
