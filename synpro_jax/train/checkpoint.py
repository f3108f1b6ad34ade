"""Orbax checkpoints of the whole training state: params, optimizer state, step, RNG and the data position.

Saves are asynchronous (training continues while a background thread writes) and atomic (orbax writes into a
temporary directory and renames it on commit), so a SIGKILL at any moment leaves the last committed checkpoint
intact and a half-written one is ignored.

:func:`read_params` reads the parameters (and, if asked, Adam's moments and count) of a trainer checkpoint
without the optimizer that wrote it: the tree layout comes from the checkpoint's own metadata and every other
leaf is skipped. This module knows only orbax and the trainer's layout (``{"train": TrainState, "rng": ...}``);
building a model-shaped target from a config, and HF directories, live in :mod:`synpro_jax.train.params_io`.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import logging
from typing import Any

from etils.epath import Path
import jax
from jax.sharding import NamedSharding, PartitionSpec
import orbax.checkpoint as ocp

from synpro_jax import atomic

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, *, save_every: int, keep: int, async_save: bool = True):
        if save_every < 1:
            raise ValueError(f"checkpoint save_every={save_every}: must be >= 1")
        if keep < 1:
            raise ValueError(f"checkpoint keep={keep}: must be >= 1")
        self.directory = atomic.absolute(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every, max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        # Across hosts orbax's async checkpointer needs jax.distributed's client; a host that did not start it fails
        # above. Logged so a multi-host run shows each host got this far.
        log.info(
            "orbax %s checkpointer on %s (process %d of %d)",
            "async" if async_save else "synchronous",
            self.directory,
            jax.process_index(),
            jax.process_count(),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Save if ``step`` is on the interval (or ``force``); returns whether a save started."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=force)

    def restore(
        self, state_template: Any, step: int | None = None, check_meta: Callable[[dict], None] | None = None
    ) -> tuple[Any, dict, int] | None:
        """(state, meta, step) of ``step`` (default: the latest), laid out like ``state_template``; None if the
        directory holds no checkpoint. ``check_meta`` sees the metadata first and may raise to refuse it; any
        failure closes the manager (its background threads) before it propagates."""
        try:
            return self._restore(state_template, step, check_meta)
        except BaseException:
            self.close()
            raise

    def _restore(self, state_template: Any, step: int | None, check_meta: Callable[[dict], None] | None):
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        if check_meta is not None:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            check_meta(meta)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x,
            state_template,
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        log.info("restored checkpoint %s/%d", self.directory, step)
        return restored.state, restored.meta, step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


@dataclasses.dataclass(frozen=True)
class AdamMoments:
    """Adam's first and second moments (shaped like the params) and its update count (bias correction)."""

    mu: Any
    nu: Any
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class SavedParams:
    params: Any
    step: int  # the TrainState step of the checkpoint
    adam: AdamMoments | None  # None unless asked for, or when the run's optimizer kept no Adam moments
    directory: Path


def checkpoint_dir(source: str | Path) -> Path:
    """A run's out_dir (holding ``checkpoints/``) or the checkpoints directory itself."""
    path = Path(source)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _find_adam(tree: Any, params_paths: set) -> tuple[Any, ...] | None:
    """Key path of the first node {count, mu, nu} under ``tree`` whose mu is shaped like the params."""

    def walk(node, at):
        if isinstance(node, dict):
            if {"count", "mu", "nu"} <= set(node):
                mu_paths = {_keys(p) for p, _ in jax.tree_util.tree_flatten_with_path(node["mu"])[0]}
                if mu_paths == params_paths:
                    return at
            items = node.items()
        elif isinstance(node, (list, tuple)):
            items = enumerate(node)
        else:
            return None
        for k, v in items:
            found = walk(v, at + (k,))
            if found is not None:
                return found
        return None

    return walk(tree, ())


def read_params(source: str | Path, target: Any, *, step: int | None = None, with_adam: bool = False) -> SavedParams:
    """Parameters of a trainer checkpoint, laid out as ``target`` (a pytree of ``jax.ShapeDtypeStruct`` with
    shardings), without the optimizer template.

    ``source`` is a run's out_dir or its checkpoints directory; ``step`` defaults to the latest committed one.
    With ``with_adam`` Adam's mu and nu (sharded like the params) and its count come too, found by shape in the
    saved optimizer state; ``adam`` is None if the run's optimizer has none. A checkpoint of another model shape
    fails naming the first differing tensor.
    """
    directory = checkpoint_dir(source)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint {source}: no such directory (expected a run's out_dir or its checkpoints/)"
        )
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(atomic.absolute(directory), item_handlers=handlers)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no committed checkpoint")
        meta = manager.item_metadata(step)["state"]
        tree = getattr(meta, "tree", meta)
        if not isinstance(tree, dict) or "params" not in tree.get("train", {}):
            raise ValueError(f"{directory}/{step}: not a synpro trainer checkpoint (no train/params)")
        want = {_keys(p): t for p, t in jax.tree_util.tree_flatten_with_path(target)[0]}
        have = {_keys(p): m for p, m in jax.tree_util.tree_flatten_with_path(tree["train"]["params"])[0]}
        for k in sorted(set(want) | set(have)):
            name = "/".join(k)
            if k not in have:
                raise ValueError(
                    f"{directory}/{step}: the checkpoint has no tensor {name} that the configured model needs"
                )
            if k not in want:
                raise ValueError(f"{directory}/{step}: tensor {name} is not part of the configured model")
            if tuple(have[k].shape) != tuple(want[k].shape):
                raise ValueError(
                    f"{directory}/{step}: tensor {name} has shape {tuple(have[k].shape)} but the "
                    f"configured model needs {tuple(want[k].shape)}"
                )
        some = jax.tree.leaves(target)[0].sharding
        scalar = NamedSharding(some.mesh, PartitionSpec()) if isinstance(some, NamedSharding) else some
        adam_at = _find_adam(tree["train"].get("opt_state"), set(want)) if with_adam else None
        if adam_at is not None:
            adam_at = ("train", "opt_state") + adam_at  # raw keys (list indices stay ints) to walk the result
        adam_keys = tuple(str(k) for k in adam_at) if adam_at is not None else None

        def leaf(path, m):
            k = _keys(path)
            if k[:2] == ("train", "params"):
                return want[k[2:]]
            if k == ("train", "step"):
                return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=scalar)
            if adam_keys is not None and k[: len(adam_keys)] == adam_keys:
                rest = k[len(adam_keys) :]
                if rest == ("count",):
                    return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=scalar)
                if rest[0] in ("mu", "nu"):
                    t = want[rest[1:]]
                    return jax.ShapeDtypeStruct(t.shape, m.dtype, sharding=t.sharding)
            return ocp.PLACEHOLDER  # not read

        template = jax.tree_util.tree_map_with_path(leaf, tree)
        restore_args = jax.tree.map(
            lambda x: (
                ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
                if isinstance(x, jax.ShapeDtypeStruct)
                else x
            ),
            template,
        )
        state = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(item=template, restore_args=restore_args))
        ).state
    finally:
        manager.close()
    adam = None
    if adam_at is not None:
        node = state
        for k in adam_at:
            node = node[k]
        adam = AdamMoments(node["mu"], node["nu"], node["count"])
    log.info("params: %s step %d%s", directory, step, " with Adam moments" if adam is not None else "")
    return SavedParams(state["train"]["params"], int(jax.device_get(state["train"]["step"])), adam, directory)
