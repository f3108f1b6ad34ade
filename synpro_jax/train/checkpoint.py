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
