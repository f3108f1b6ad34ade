"""Pretraining: optimizer, schedules, the sharded train step (the Trainer lives in synpro_jax.train.trainer)."""

from synpro_jax.train.optimizer import OptimizerConfig, decay_mask, make_optimizer, make_schedule
from synpro_jax.train.step import TrainState, TrainStep, loss_and_grads, next_token_batch, train_step

__all__ = [
    "OptimizerConfig",
    "decay_mask",
    "make_optimizer",
    "make_schedule",
    "TrainState",
    "TrainStep",
    "loss_and_grads",
    "next_token_batch",
    "train_step",
]
