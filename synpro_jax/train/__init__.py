"""Pretraining: optimizer, schedules and the sharded train step."""

from synpro_jax.train.optimizer import OptimizerConfig, decay_mask, make_optimizer, make_schedule
from synpro_jax.train import metrics
from synpro_jax.train.step import TrainState, TrainStep, loss_and_grads, next_token_batch, train_step

__all__ = ["OptimizerConfig", "decay_mask", "make_optimizer", "make_schedule", "TrainState", "TrainStep",
           "loss_and_grads", "next_token_batch", "train_step"]
