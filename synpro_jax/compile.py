"""Ahead-of-time compilation for a TPU topology on a machine without TPUs (after MaxText's train_compile).

``synpro compile --gin_file=EXPERIMENT --topology=v5e-8`` builds the experiment's model, mesh and pretraining
step over the devices of a TPU topology that libtpu describes (no TPU needed, only the ``libtpu`` package),
lowers and compiles the step with XLA:TPU, and reports its per-device memory: arguments, outputs, temporaries
and the total against the chip's HBM. A config that does not fit fails with the numbers. Without libtpu (or
with ``--topology=cpu``) the same program is compiled for the local CPU devices, whose memory analysis is the
fallback report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

import jax

log = logging.getLogger(__name__)

GiB = 1024**3
# Cloud TPU names -> (libtpu topology, HBM per device). v4 and v5p count TensorCores in their names (2 per chip,
# one megacore device); v5e and v6e count chips.
TOPOLOGIES: dict[str, tuple[str, int]] = {
    "v4-8": ("v4:2x2x1", 32 * GiB),
    "v4-16": ("v4:2x2x2", 32 * GiB),
    "v4-32": ("v4:2x2x4", 32 * GiB),
    "v5e-1": ("v5e:1x1", 16 * GiB),
    "v5e-4": ("v5e:2x2", 16 * GiB),
    "v5e-8": ("v5e:2x4", 16 * GiB),
    "v5e-16": ("v5e:4x4", 16 * GiB),
    "v5p-8": ("v5p:2x2x1", 95 * GiB),
    "v6e-8": ("v6e:2x4", 32 * GiB),
}


@dataclasses.dataclass
class MemoryReport:
    program: str
    target: str  # the topology, or "cpu (fallback: ...)"
    devices: int
    mesh: dict
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int | None
    note: str = ""  # the compiler's own words when it refused the program (out of HBM)

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool | None:
        if self.note:
            return False
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def line(self) -> str:
        gib = lambda b: f"{b / GiB:,.2f} GiB"  # noqa: E731
        verdict = "fits" if self.fits else "DOES NOT FIT"
        hbm = "" if self.hbm_bytes is None else f" of {gib(self.hbm_bytes)} HBM ({verdict})"
        if self.note:
            return f"{self.program} on {self.target} ({self.devices} devices, mesh {self.mesh}): {self.note}{hbm}"
        return (f"{self.program} on {self.target} ({self.devices} devices, mesh {self.mesh}): per device arguments "
                f"{gib(self.argument_bytes)}, outputs {gib(self.output_bytes)} (aliased {gib(self.alias_bytes)}), "
                f"temporaries {gib(self.temp_bytes)}, code {gib(self.code_bytes)}; total {gib(self.total_bytes)}{hbm}")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "fits": self.fits}


def topology_devices(topology: str) -> tuple[list[Any], int | None, str]:
    """(devices, HBM bytes per device, what they are) for a Cloud TPU name, or the local devices for "cpu"."""
    if topology == "cpu":
        return list(jax.devices()), None, f"cpu ({jax.device_count()} local devices)"
    if topology not in TOPOLOGIES:
        raise ValueError(f"--topology={topology!r}: choose one of {sorted(TOPOLOGIES)} or cpu")
    name, hbm = TOPOLOGIES[topology]
    from jax.experimental import topologies

    try:
        # v4 and v5p as JAX runs them: one megacore device per chip (two TensorCores).
        extra = {"chip_config_name": "megacore"} if name.startswith(("v4:", "v5p:")) else {}
        desc = topologies.get_topology_desc(name, platform="tpu", **extra)
    except Exception as e:  # noqa: BLE001 - libtpu missing, or it cannot describe this topology here
        raise RuntimeError(f"libtpu cannot describe {topology} ({name}) on this machine: "
                           f"{' '.join(str(e).split())[:300]}") from e
    return list(desc.devices), hbm, f"{topology} ({name}, {desc.devices[0].device_kind})"


def train_step_memory(model, mesh_cfg, opt_cfg, global_batch: int, seq_len: int, z_loss: float, accum_steps: int,
                      topology: str) -> MemoryReport:
    """Compile the pretraining step for ``topology`` and report its memory per device."""
    import jax.numpy as jnp

    from synpro_jax import models, sharding
    from synpro_jax.train.step import TrainState, TrainStep

    devices, hbm, target = topology_devices(topology)
    mesh = sharding.make_mesh(mesh_cfg, devices=devices)
    step = TrainStep(model, mesh, opt_cfg, z_loss=z_loss, accum_steps=accum_steps)
    params = models.abstract_params(model)
    opt_state = jax.eval_shape(step.optimizer.init, params)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                                  step.state_shardings)
    row = jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=step.batch_sharding)
    batch = {"inputs": row, "targets": row}
    program = (f"train step ({model.name}, batch {global_batch} x {seq_len}, accum {accum_steps}, {model.dtype}, "
               f"remat {model.remat}, attention {model.attention}, loss_chunk {model.loss_chunk})")
    lowered = step.lower(abstract_state, batch)
    with jax.set_mesh(mesh):
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - XLA:TPU refuses a program that cannot fit its HBM
            text = " ".join(str(e).split())
            need = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", text)
            if "RESOURCE_EXHAUSTED" not in text or need is None:
                raise
            temp = int(float(need.group(1)) * 1024 ** " KMGT".index(need.group(2)))
            return MemoryReport(program, target, len(devices), dict(mesh.shape), 0, 0, 0, temp, 0, hbm,
                                note=f"XLA:TPU ran out of HBM: {need.group(1)}{need.group(2)} of temporaries alone")
    mem = compiled.memory_analysis()
    return MemoryReport(
        program=program,
        target=target, devices=len(devices), mesh=dict(mesh.shape),
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), hbm_bytes=hbm)


def compile_experiment(topology: str) -> list[MemoryReport]:
    """The parsed gin experiment's pretraining step on ``topology`` (gin must be parsed already). TrainerConfig's
    batch shape is read knob by knob: constructing it would need its REQUIRED out_dir."""
    from synpro_jax.configs import bound
    from synpro_jax.sharding import MeshConfig

    report = train_step_memory(
        bound("synpro.pretrain.model"), bound("synpro.pretrain.mesh", MeshConfig()),
        bound("synpro.pretrain.optimizer"), bound("synpro.TrainerConfig.global_batch"),
        bound("synpro.TrainerConfig.seq_len"), bound("synpro.TrainerConfig.z_loss", 1e-5),
        bound("synpro.TrainerConfig.accum_steps", 1), topology)
    return [report]


def to_json(reports: list[MemoryReport]) -> str:
    return json.dumps([r.as_dict() for r in reports], indent=2)
