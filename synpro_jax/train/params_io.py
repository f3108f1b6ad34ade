"""Model parameters from any source a stage is pointed at: an HF Olmo2 directory or a synpro run.

The probe, the influence service and synthesis all read their weights here. A run is read with
:func:`synpro_jax.train.checkpoint.read_params` (no optimizer template, so a run trained with any optimizer
settings loads); an HF directory through :mod:`synpro_jax.models.hf`. Both come back sharded for the mesh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from etils.epath import Path
import jax
from jax.sharding import Mesh

from synpro_jax import atomic, models, sharding
from synpro_jax.models import ModelConfig, hf
from synpro_jax.train.checkpoint import AdamMoments, checkpoint_dir, read_params

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedParams:
    params: Any  # sharded for the mesh
    step: int  # the run's training step; 0 for an HF directory
    source: str  # absolute path
    kind: str  # "hf" or "checkpoint"
    adam: AdamMoments | None = None  # only for a run, and only when asked for


def is_hf_dir(source: str | Path) -> bool:
    return (Path(source) / "config.json").exists()


def abstract_target(cfg: ModelConfig, mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> Any:
    """float32 ShapeDtypeStructs with the mesh's shardings: what a checkpoint is read into."""
    shardings = models.param_shardings(cfg, mesh, rules)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), models.abstract_params(cfg), shardings
    )


# The provenance file a GRPO export carries (rl/trainer.py writes it): its "step" is the policy's training step.
EXPORT_INFO = "synpro_grpo.json"


def hf_step(path: str | Path) -> int:
    """The training step of an HF directory: its GRPO export's step, 0 for any other (a released model)."""
    info = Path(path) / EXPORT_INFO
    if not info.exists():
        return 0
    try:
        return int(json.loads(info.read_text(encoding="utf-8")).get("step", 0))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{info}: not a readable GRPO export record ({e})") from None


def load(
    cfg: ModelConfig,
    mesh: Mesh,
    source: str | Path,
    *,
    with_adam: bool = False,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> LoadedParams:
    """Parameters of ``source`` for model ``cfg`` on ``mesh``; see the module docstring.

    ``with_adam`` also reads a run's Adam moments and count (an HF directory has none: ``adam`` is None).
    """
    path = Path(source)
    if is_hf_dir(path):
        hf_cfg, params = hf.load(path)
        want = jax.tree.map(lambda a: a.shape, models.abstract_params(cfg))
        have = jax.tree.map(lambda a: a.shape, params)
        if want != have:
            raise ValueError(f"{path}: {hf_cfg.describe()} does not match the configured model {cfg.describe()}")
        params = jax.device_put(params, models.param_shardings(cfg, mesh, rules))
        return LoadedParams(params, hf_step(path), str(atomic.absolute(path)), "hf")
    if not checkpoint_dir(path).is_dir():
        raise FileNotFoundError(
            f"checkpoint {source}: neither an HF directory (config.json) nor a run with checkpoints"
        )
    saved = read_params(path, abstract_target(cfg, mesh, rules), with_adam=with_adam)
    return LoadedParams(saved.params, saved.step, str(atomic.absolute(path)), "checkpoint", saved.adam)


def load_params_and_step(cfg: ModelConfig, mesh: Mesh, source: str | Path) -> tuple[Any, int]:
    """Parameters (sharded for ``mesh``) and their training step from an HF Olmo2 directory (step 0) or a run's
    out_dir / checkpoints directory (its latest committed step)."""
    loaded = load(cfg, mesh, source)
    return loaded.params, loaded.step


def load_params(cfg: ModelConfig, mesh: Mesh, source: str | Path) -> Any:
    """Parameters only; see :func:`load_params_and_step`."""
    return load(cfg, mesh, source).params


def per_host(cfg: ModelConfig, mesh: Mesh, *trees: Any) -> tuple[Any, ...]:
    """``(mesh, *trees)`` for bulk inference, which runs one replica per host on its own share of the documents:
    on several processes, :func:`sharding.host_mesh` and copies of the parameter trees laid out on it (every
    process must call this: global arrays are gathered first); on one process, unchanged."""
    if jax.process_count() == 1:
        return (mesh, *trees)
    local = sharding.host_mesh(mesh)
    shardings = models.param_shardings(cfg, local)
    return (local, *(jax.device_put(jax.tree.map(sharding.to_host, t), shardings) for t in trees))
