"""Orbax checkpoints of the whole training state: params, optimizer state, step, RNG and the data position.

Saves are asynchronous (training continues while a background thread writes) and atomic (orbax writes into a
temporary directory and renames it on commit), so a SIGKILL at any moment leaves the last committed checkpoint
intact and a half-written one is ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, *, save_every: int, keep: int, async_save: bool = True):
        if save_every < 1:
            raise ValueError(f"checkpoint save_every={save_every}: must be >= 1")
        if keep < 1:
            raise ValueError(f"checkpoint keep={keep}: must be >= 1")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=keep,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Save if ``step`` is on the interval (or ``force``); returns whether a save started."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=force)

    def restore(self, state_template: Any, step: int | None = None,
                check_meta: Callable[[dict], None] | None = None) -> tuple[Any, dict, int] | None:
        """(state, meta, step) of ``step`` (default: the latest), laid out like ``state_template``; None if the
        directory holds no checkpoint. ``check_meta`` sees the metadata first and may raise to refuse it."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        if check_meta is not None:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            check_meta(meta)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x,
            state_template)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      meta=ocp.args.JsonRestore()))
        log.info("restored checkpoint %s/%d", self.directory, step)
        return restored.state, restored.meta, step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_params_and_step(cfg, mesh, source: str | Path) -> tuple[Any, int]:
    """Parameters (sharded for ``mesh``) and their training step from an HF Olmo2 directory (config.json;
    step 0) or a run's out_dir / checkpoints directory (its latest committed step)."""
    from synpro_jax import models

    path = Path(source)
    if (path / "config.json").exists():
        from synpro_jax.models import hf

        hf_cfg, params = hf.load(path)
        if (hf_cfg.d_model, hf_cfg.num_layers, hf_cfg.vocab_size) != (cfg.d_model, cfg.num_layers, cfg.vocab_size):
            raise ValueError(f"{path}: {hf_cfg.describe()} does not match the configured model {cfg.describe()}")
        return jax.device_put(params, models.param_shardings(cfg, mesh)), 0
    from synpro_jax.train.optimizer import OptimizerConfig
    from synpro_jax.train.step import TrainStep

    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"checkpoint {source}: neither an HF directory nor a run with checkpoints")
    step = TrainStep(cfg, mesh, OptimizerConfig(warmup_steps=0))
    template = {"train": step.init(jax.random.key(0)), "rng": jax.random.key_data(jax.random.key(0))}
    ckpt = Checkpointer(ckpt_dir, save_every=1, keep=1, async_save=False)
    try:
        restored = ckpt.restore(template)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint")
    state, _, at = restored
    log.info("params: %s step %d", ckpt_dir, at)
    return state["train"].params, int(at)


def load_params(cfg, mesh, source: str | Path) -> Any:
    """Parameters only; see :func:`load_params_and_step`."""
    return load_params_and_step(cfg, mesh, source)[0]
