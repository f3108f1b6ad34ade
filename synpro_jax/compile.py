"""Ahead-of-time compilation for a TPU topology on a machine without TPUs (after MaxText's train_compile).

``synpro compile --gin_file=EXPERIMENT --topology=v5e-8`` builds the experiment's programs over the devices of a
TPU topology that libtpu describes (no TPU needed, only the ``libtpu`` package): the pretraining step, the GRPO
step and the GRPO rollout sampler (its prefill and its decode loop). Each is lowered with abstract inputs
(ShapeDtypeStructs laid out on the topology's mesh) through the same jitted callables the runs use, compiled
with XLA:TPU, and reported per device: arguments, outputs, temporaries and the total against the chip's HBM. A
program that does not fit fails with the numbers. Where libtpu cannot describe the topology (not installed, or
too old for it), as many XLA:CPU devices as the topology has chips stand in for them: the same programs on the
same mesh shape, checked against the chip's HBM, reported as XLA:CPU's estimate. ``--topology=cpu`` compiles
for the local devices (a verdict only with a budget, ``hbm_bytes``).

The GRPO programs run beside buffers that are not their arguments (GRPOTrainer keeps the frozen reference and
the sampler's weights through the update, and the learner's state through the rollout; the data_influence
reward keeps theta and theta' throughout); their per-device size is counted in the total as ``resident``. The
GRPO shapes come from the experiment's GRPO bindings, as ``synpro grpo`` reads them; what an experiment leaves
unbound (a pretraining experiment: all of it) takes the release's values: the olmo2_1b_instruct generator in
bf16, GRPOConfig's defaults, 4 prompts per data shard, 4 micro-batches, on synpro.grpo's default
(data-parallel) mesh. The report lines say which were filled in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
from typing import Any

from etils.epath import Path
import gin
import jax
from jax.experimental import topologies
import jax.numpy as jnp

from synpro_jax import gin_files, models, native_stderr, sharding, tpu_chips
from synpro_jax.configs import bound
from synpro_jax.generation import sampler as sampler_lib
from synpro_jax.generation.sampler import MIN_NEW_BUCKET, MIN_PROMPT_BUCKET, bucket
from synpro_jax.models import hf
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.rl.learner import GRPOStep
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.step import TrainState, TrainStep

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
    resident_bytes: int = 0  # buffers held beside the program that are not its arguments (per device)
    resident: str = ""  # what they are
    kind: str = ""  # train_step, grpo_step, sampler_prefill or sampler_decode

    @property
    def total_bytes(self) -> int:
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.code_bytes
            + self.resident_bytes
        )

    @property
    def fits(self) -> bool | None:
        if self.note:
            return False
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def line(self) -> str:
        gib = lambda b: f"{b / GiB:,.2f} GiB"  # noqa: E731
        verdict = "fits" if self.fits else "DOES NOT FIT"
        hbm = "" if self.hbm_bytes is None else f" of {gib(self.hbm_bytes)} HBM ({verdict})"
        beside = f", resident {gib(self.resident_bytes)} ({self.resident})" if self.resident_bytes else ""
        if self.note:
            return (
                f"{self.program} on {self.target} ({self.devices} devices, mesh {self.mesh}): {self.note}{beside}{hbm}"
            )
        return (
            f"{self.program} on {self.target} ({self.devices} devices, mesh {self.mesh}): per device arguments "
            f"{gib(self.argument_bytes)}, outputs {gib(self.output_bytes)} (aliased {gib(self.alias_bytes)}), "
            f"temporaries {gib(self.temp_bytes)}, code {gib(self.code_bytes)}{beside}; total "
            f"{gib(self.total_bytes)}{hbm}"
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "fits": self.fits}


def chip_count(topology: str) -> int:
    """The devices JAX sees on a Cloud TPU topology: its chips (v4 and v5p as one megacore device per chip)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"--topology={topology!r}: choose one of {sorted(TOPOLOGIES)} or cpu")
    return math.prod(int(d) for d in TOPOLOGIES[topology][0].split(":")[1].split("x"))


def _describe(name: str):
    """libtpu's description of a topology. libtpu logs its search for TPU workers and metadata to stderr even
    when it only describes one (E0000 ... TPU_WORKER_HOSTNAMES): captured, and replayed only if it fails."""
    # v4 and v5p as JAX runs them: one megacore device per chip (two TensorCores).
    extra = {"chip_config_name": "megacore"} if name.startswith(("v4:", "v5p:")) else {}
    if not tpu_chips.present():
        # No chips to guard: libtpu's one-process lockfile would only stop a second compile running beside this one.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    with native_stderr.held():
        return topologies.get_topology_desc(name, platform="tpu", **extra)


def topology_devices(topology: str) -> tuple[list[Any], int | None, str]:
    """(devices, HBM bytes per device, what they are) for a Cloud TPU name through libtpu, or the local devices
    for "cpu". A RuntimeError when libtpu cannot describe it (see :func:`cpu_stand_in`)."""
    if topology == "cpu":
        return list(jax.devices()), None, f"cpu ({jax.device_count()} local devices)"
    chip_count(topology)  # an unknown name fails first
    name, hbm = TOPOLOGIES[topology]
    try:
        desc = _describe(name)
    except Exception as e:  # noqa: BLE001 - libtpu missing, or it cannot describe this topology here
        raise RuntimeError(
            f"libtpu cannot describe {topology} ({name}) on this machine: {' '.join(str(e).split())[:300]}"
        ) from e
    return list(desc.devices), hbm, f"{topology} ({name}, {desc.devices[0].device_kind})"


def use_cpu_devices(n: int) -> bool:
    """Ask for ``n`` XLA:CPU devices; False when JAX's backend already started with fewer (the caller must then
    run in a fresh process, e.g. with JAX_NUM_CPU_DEVICES=n)."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
        return True
    except RuntimeError:  # the backend is up: its devices are what there is
        return len(jax.devices("cpu")) >= n


def cpu_stand_in(topology: str, reason: str = "") -> tuple[list[Any], int, str]:
    """(the first chip_count(topology) CPU devices, the chip's HBM, what they are): XLA:CPU's estimate for a
    topology libtpu cannot describe. A RuntimeError naming JAX_NUM_CPU_DEVICES when there are too few."""
    n, hbm = chip_count(topology), TOPOLOGIES[topology][1]
    if not use_cpu_devices(n):
        raise RuntimeError(
            f"XLA:CPU's estimate for {topology} needs {n} CPU devices but JAX started with "
            f"{len(jax.devices('cpu'))}; rerun in a fresh process with JAX_NUM_CPU_DEVICES={n}"
        )
    why = f"; {reason}" if reason else ""
    return (
        jax.devices("cpu")[:n],
        hbm,
        f"XLA:CPU's estimate for {topology} ({n} CPU devices standing in for its chips, their HBM{why})",
    )


def target_devices(topology: str) -> tuple[list[Any], int | None, str]:
    """:func:`topology_devices`, falling back to :func:`cpu_stand_in` where libtpu cannot describe it."""
    try:
        return topology_devices(topology)
    except RuntimeError as e:
        if topology == "cpu":
            raise
        return cpu_stand_in(topology, str(e))


# The release's GRPO batch (docs/reference.md): 8 completions of a prompt (G) per device per micro-batch and 4
# micro-batches, i.e. 4 prompts per data shard per step; and its generator's shape.
RELEASE_PROMPTS_PER_SHARD = 4
RELEASE_ACCUM_STEPS = 4
GENERATOR_PRESET = "olmo2_1b_instruct"

# What to turn when a program does not fit, by MemoryReport.kind.
HINTS = {
    "train_step": "shard more (synpro.MeshConfig), remat (synpro.preset.remat), chunk the loss "
    "(synpro.preset.loss_chunk) or lower the batch",
    "grpo_step": "shard more (synpro.grpo.mesh), more micro-batches (synpro.GRPORunConfig.accum_steps), chunk the "
    "output head (synpro.GRPORunConfig.logits_chunk), remat, or fewer prompts per step / shorter "
    "GRPOConfig.max_prompt_tokens and max_completion_tokens",
    "sampler": "shard more (synpro.grpo.mesh; tensor also splits the sampler's weights and KV cache), fewer "
    "prompts per step (synpro.GRPORunConfig.prompts_per_step) or shorter GRPOConfig.max_prompt_tokens "
    "and max_completion_tokens",
}


def hint(report: MemoryReport) -> str:
    return HINTS.get(report.kind, HINTS["sampler"] if report.kind.startswith("sampler") else "")


def _target(mesh_cfg, topology: str, hbm_bytes: int | None):
    """(mesh over the topology's devices, HBM per device to check against, what they are). ``hbm_bytes``
    overrides the topology's (a budget for the CPU fallback, or a what-if)."""
    devices, hbm, target = target_devices(topology)
    return sharding.make_mesh(mesh_cfg, devices=devices), hbm if hbm_bytes is None else hbm_bytes, target


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def per_device_bytes(tree) -> int:
    """What one device holds of abstract arrays laid out by their shardings."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _compile(
    lowered, mesh, program: str, kind: str, target: str, hbm: int | None, resident_bytes: int = 0, resident: str = ""
) -> MemoryReport:
    """Compile ``lowered`` and report its memory; XLA:TPU's out-of-HBM refusal becomes a report with a note."""
    common = {
        "program": program,
        "target": target,
        "devices": mesh.size,
        "mesh": dict(mesh.shape),
        "hbm_bytes": hbm,
        "resident_bytes": resident_bytes,
        "resident": resident,
        "kind": kind,
    }
    with jax.set_mesh(mesh):
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - XLA:TPU refuses a program that cannot fit its HBM
            text = " ".join(str(e).split())
            need = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", text)
            if "RESOURCE_EXHAUSTED" not in text or need is None:
                raise
            temp = int(float(need.group(1)) * 1024 ** " KMGT".index(need.group(2)))
            return MemoryReport(
                argument_bytes=0,
                output_bytes=0,
                alias_bytes=0,
                temp_bytes=temp,
                code_bytes=0,
                note=f"XLA:TPU ran out of HBM: {need.group(1)}{need.group(2)} of temporaries alone",
                **common,
            )
    mem = compiled.memory_analysis()
    return MemoryReport(
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        **common,
    )


def train_step_memory(
    model,
    mesh_cfg,
    opt_cfg,
    global_batch: int,
    seq_len: int,
    z_loss: float,
    accum_steps: int,
    topology: str,
    *,
    hbm_bytes: int | None = None,
) -> MemoryReport:
    """Compile the pretraining step for ``topology`` and report its memory per device."""
    mesh, hbm, target = _target(mesh_cfg, topology, hbm_bytes)
    step = TrainStep(model, mesh, opt_cfg, z_loss=z_loss, accum_steps=accum_steps)
    params = models.abstract_params(model)
    opt_state = jax.eval_shape(step.optimizer.init, params)
    state = _abstract(TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state), step.state_shardings)
    row = jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=step.batch_sharding)
    program = (
        f"train step ({model.name}, batch {global_batch} x {seq_len}, accum {accum_steps}, {model.dtype}, "
        f"remat {model.remat}, attention {model.attention}, loss_chunk {model.loss_chunk})"
    )
    return _compile(step.lower(state, {"inputs": row, "targets": row}), mesh, program, "train_step", target, hbm)


def _grpo_step(
    model, mesh, grpo_cfg, accum_steps: int = 1, logits_chunk: int | None = None, share_prompts: bool = True
):
    # total_steps only shapes the learning-rate schedule, not the program's memory.
    return GRPOStep(
        model,
        mesh,
        grpo_cfg,
        total_steps=1000,
        accum_steps=accum_steps,
        logits_chunk=logits_chunk,
        prompt_group=grpo_cfg.num_generations if share_prompts else 1,
    )


def _learner_buffers(step, model, grpo_cfg) -> tuple[Any, Any]:
    """Abstract (learner state, frozen reference or None) as GRPOTrainer holds them on the mesh."""
    params = models.abstract_params(model)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(step.optimizer.init, params))
    ref = None
    if grpo_cfg.beta > 0:  # float32 copies in the learner's param shardings
        ref = _abstract(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), params), step.param_shardings
        )
    return _abstract(state, step.state_shardings), ref


def _sampler_programs(model, mesh, on_cpu: bool = False):
    """The sampler's jitted (place, prefill, decode, input shardings) for this mesh, and its KV cache dtype:
    the very callables ``Sampler`` compiles (it needs real weights to build, so it is not built here)."""
    # Sampler's own default: float32 when it runs on CPU (bf16 decode attention is slow there), else the compute
    # dtype; CPU devices standing in for a TPU topology estimate the TPU's cache.
    cache_dtype = "float32" if on_cpu else model.dtype
    place, prefill, decode, _, inputs = sampler_lib.programs(model, mesh, sharding.SAMPLING_RULES, cache_dtype)
    return place, prefill, decode, inputs, cache_dtype


def _sampler_weights(model, mesh, place):
    with jax.set_mesh(mesh), sharding.use_rules(sharding.SAMPLING_RULES):
        return jax.eval_shape(place, models.abstract_params(model))


def influence_bytes(influence, mesh) -> int:
    """Per device: theta and theta' of the data_influence reward, float32 in their parameter shardings (as
    influence.Probe places them on the GRPO mesh)."""
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), models.abstract_params(influence))
    return 2 * per_device_bytes(_abstract(params, models.param_shardings(influence, mesh)))


def _prompts(prompts_per_step: int | None, mesh) -> int:
    """The step's prompts; None: the release's 4 per data shard of the learner's mesh."""
    return RELEASE_PROMPTS_PER_SHARD * sharding.batch_shards(mesh) if prompts_per_step is None else prompts_per_step


def grpo_step_memory(
    model,
    mesh_cfg,
    grpo_cfg,
    prompts_per_step: int | None = None,
    accum_steps: int = 1,
    logits_chunk: int | None = None,
    share_prompts: bool = True,
    topology: str = "cpu",
    *,
    hbm_bytes: int | None = None,
    source: str = "",
    influence=None,
) -> MemoryReport:
    """Compile GRPOTrainer's update (GRPOStep) for ``topology`` and report its memory per device.

    The batch is a rollout at its largest: ``prompts_per_step`` x G rows of the bucketed max_prompt_tokens
    slots plus max_completion_tokens, with ref_logp when beta > 0 and old_logp when num_iterations > 1. The
    frozen reference and the sampler's weights, held beside it, are counted as resident, and so are theta and
    theta' of the data_influence reward when ``influence`` (their model config) is given."""
    mesh, hbm, target = _target(mesh_cfg, topology, hbm_bytes)
    g = grpo_cfg
    if g.max_prompt_tokens + g.max_completion_tokens > model.max_seq_len:  # GRPOTrainer's own check
        raise ValueError(
            f"GRPOConfig.max_prompt_tokens={g.max_prompt_tokens} + max_completion_tokens="
            f"{g.max_completion_tokens} exceeds {model.name}'s max_seq_len={model.max_seq_len}"
        )
    prompts = _prompts(prompts_per_step, mesh)
    rows, shards = prompts * g.num_generations, sharding.batch_shards(mesh)
    if rows % (accum_steps * shards):
        raise ValueError(
            f"{prompts} prompts x GRPOConfig.num_generations={g.num_generations} = {rows} completions "
            f"must divide into accum_steps={accum_steps} micro-batches over the mesh's {shards} data "
            "shards"
        )
    step = _grpo_step(model, mesh, g, accum_steps, logits_chunk, share_prompts)
    state, ref = _learner_buffers(step, model, g)
    p, c = bucket(g.max_prompt_tokens, MIN_PROMPT_BUCKET), g.max_completion_tokens
    leaf = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=step.batch_sharding)  # noqa: E731
    batch = {
        "tokens": leaf((rows, p + c), jnp.int32),
        "positions": leaf((rows, p + c), jnp.int32),
        "segment_ids": leaf((rows, p + c), jnp.int32),
        "completion_mask": leaf((rows, c), jnp.bool_),
        "advantages": leaf((rows,), jnp.float32),
    }
    if g.beta > 0:
        batch["ref_logp"] = leaf((rows, c), jnp.float32)
    if g.num_iterations > 1:
        batch["old_logp"] = leaf((rows, c), jnp.float32)
    lowered = step.lower(state, batch)
    weights = per_device_bytes(_sampler_weights(model, mesh, _sampler_programs(model, mesh)[0]))
    beside = ([per_device_bytes(ref)] if ref is not None else []) + [weights]
    what = ("frozen reference, " if ref is not None else "") + "sampler weights"
    if influence is not None:
        beside.append(influence_bytes(influence, mesh))
        what += f", influence theta and theta' ({influence.name})"
    program = (
        f"grpo step ({model.name}, {rows} completions = {prompts} prompts x G {g.num_generations}, {p} prompt "
        f"+ {c} completion slots, accum {accum_steps}, logits_chunk {logits_chunk}, prompt_group "
        f"{step.prompt_group}, beta {g.beta}, {model.dtype}, remat {model.remat}" + (f"; {source})" if source else ")")
    )
    return _compile(lowered, mesh, program, "grpo_step", target, hbm, sum(beside), what)


def sampler_memory(
    model,
    mesh_cfg,
    grpo_cfg,
    prompts_per_step: int | None = None,
    topology: str = "cpu",
    *,
    with_learner: bool = True,
    hbm_bytes: int | None = None,
    source: str = "",
    influence=None,
) -> list[MemoryReport]:
    """Compile the GRPO rollout sampler's prefill and decode for ``topology``; one report each.

    ``prompts_per_step`` prompts of the bucketed max_prompt_tokens slots, G = num_generations completions each of
    the bucketed max_completion_tokens slots, through the jitted programs :class:`Sampler` uses. With
    ``with_learner`` the learner's state (and the frozen reference when beta > 0), which GRPOTrainer holds
    through the rollout, is counted as resident, and so are theta and theta' of the data_influence reward when
    ``influence`` (their model config) is given."""
    mesh, hbm, target = _target(mesh_cfg, topology, hbm_bytes)
    g = grpo_cfg
    place, prefill, decode, (row_s, grid_s, one_s), cache_dtype = _sampler_programs(model, mesh, topology == "cpu")
    prompts = _prompts(prompts_per_step, mesh)
    rows = bucket(prompts, 1, sharding.batch_shards(mesh, sharding.SAMPLING_RULES))  # as Sampler._run pads
    p, n = bucket(g.max_prompt_tokens, MIN_PROMPT_BUCKET), bucket(g.max_completion_tokens, MIN_NEW_BUCKET)
    weights = _sampler_weights(model, mesh, place)
    grid = jax.ShapeDtypeStruct((rows, p), jnp.int32, sharding=grid_s)
    per_row = jax.ShapeDtypeStruct((rows * g.num_generations,), jnp.int32, sharding=row_s)
    one = lambda dtype, shape=(): jax.ShapeDtypeStruct(shape, dtype, sharding=one_s)  # noqa: E731
    with jax.set_mesh(mesh), sharding.use_rules(sharding.SAMPLING_RULES):
        pre = prefill.lower(weights, grid, grid, grid, g.num_generations)
        logits, cache = pre.out_info
        # (seed, temperature, top_k, top_p, eos ids padded to 8, pad id), as Sampler._run passes them
        dec = decode.lower(
            weights,
            cache,
            logits,
            per_row,
            per_row,
            per_row,
            one(jnp.uint32),
            one(jnp.float32),
            one(jnp.int32),
            one(jnp.float32),
            one(jnp.int32, (8,)),
            one(jnp.int32),
            n,
        )
    resident_bytes, resident = 0, ""
    if with_learner:
        state, ref = _learner_buffers(_grpo_step(model, mesh, g), model, g)
        resident_bytes = per_device_bytes(state) + (per_device_bytes(ref) if ref is not None else 0)
        resident = "learner state" + (", frozen reference" if ref is not None else "")
    if influence is not None:
        resident_bytes += influence_bytes(influence, mesh)
        resident += (", " if resident else "") + f"influence theta and theta' ({influence.name})"
    tail = f"; {source})" if source else ")"
    shape = f"{model.name}, {rows} prompts x {p} slots"
    return [
        _compile(
            pre,
            mesh,
            f"sampler prefill ({shape}, kv cache {cache_dtype}{tail}",
            "sampler_prefill",
            target,
            hbm,
            resident_bytes,
            resident,
        ),
        _compile(
            dec,
            mesh,
            f"sampler decode ({shape} x G {g.num_generations} + {n} new slots, kv cache {cache_dtype}{tail}",
            "sampler_decode",
            target,
            hbm,
            resident_bytes,
            resident,
        ),
    ]


@dataclasses.dataclass(frozen=True)
class GRPOShapes:
    """What the GRPO step and the sampler are compiled for, and where it came from."""

    model: Any
    mesh: Any
    algorithm: Any
    prompts_per_step: int | None  # None: RELEASE_PROMPTS_PER_SHARD per data shard
    accum_steps: int
    logits_chunk: int | None
    share_prompts: bool
    source: str
    influence: Any = None  # theta's model config when the data_influence reward runs its local probe


# What ``synpro compile`` binds to a REQUIRED macro left unset (a path to data, a run directory): it reads no data.
UNSET = "synpro-compile-unset"


def unset_macros(files, bindings, search_paths=()) -> list[str]:
    """The REQUIRED macros that neither the gin files nor the bindings set."""
    file_bindings, cli, _ = gin_files.scan(files, bindings, gin_files.search_paths(search_paths))
    final = {b.name: b.value for b in file_bindings + cli if not b.param}
    return [name for name, value in final.items() if repr(value) == "%gin.REQUIRED"]


def placeholder_bindings(macros) -> list[str]:
    return [f'{m} = "{UNSET}:{m}"' for m in macros]


def _unset_macro(value) -> str | None:
    return value.split(":", 1)[1] if isinstance(value, str) and value.startswith(UNSET + ":") else None


def _refuse_unset(name: str, macro: str):
    raise ValueError(f"{name} = %{macro}, a REQUIRED macro: set it (--gin.{macro}=VALUE) to compile")


def _read(name: str, *default):
    """configs.bound, refusing a shape knob that comes from a REQUIRED macro compile left unset."""
    value = bound(name, *default)
    macro = _unset_macro(value)
    if macro:
        _refuse_unset(name, macro)
    return value


def _is_bound(name: str) -> bool:
    try:
        gin.query_parameter(name)
    except ValueError:
        return False
    return True


def grpo_shapes() -> GRPOShapes:
    """The GRPO step's and sampler's settings as ``synpro grpo`` (and the loop's GRPO stage) take them from the
    parsed gin files. What is unbound (or a REQUIRED macro) takes the release's value from gin/runs/grpo.gin
    (bf16, 4 micro-batches, GRPOConfig's defaults), 4 prompts per data shard, and for a generator without a
    model config the olmo2_1b_instruct preset; ``source`` lists what was so filled in. With a local
    data_influence reward, theta's model (synpro.grpo.influence_model, or THETA's config.json) is ``influence``."""
    filled = []

    def knob(name, default, what="", path=False):
        if _is_bound(name):
            value = UNSET
            with contextlib.suppress(Exception):  # a REQUIRED macro: nothing to read
                value = bound(name)
            macro = _unset_macro(value)
            if macro and not path:  # a path only names a shape (its config.json): unset is as unbound
                _refuse_unset(name, macro)
            if value is not UNSET and not macro:
                return value
        if what:
            filled.append(what)
        return default

    model = knob("synpro.grpo.model", None)
    if model is None:  # an HF generator names its shape in config.json
        generator = knob("synpro.grpo.generator", None, path=True)
        if isinstance(generator, str) and (Path(generator) / "config.json").exists():
            model = hf.read_config(generator)
        else:
            model = models.get_preset(GENERATOR_PRESET)
            filled.append(f"the {GENERATOR_PRESET} preset")
    dtype = knob("synpro.grpo.dtype", "bfloat16", "bf16")
    if dtype:  # None keeps the model's own dtype, as synpro.grpo does
        model = model.replace(dtype=dtype)
    mesh = knob("synpro.grpo.mesh", MeshConfig(), "synpro.grpo's data-parallel mesh")
    algorithm = knob("synpro.grpo.algorithm", None, "GRPOConfig()") or GRPOConfig()
    prompts = knob("synpro.GRPORunConfig.prompts_per_step", None, f"{RELEASE_PROMPTS_PER_SHARD} prompts per data shard")
    accum = knob("synpro.GRPORunConfig.accum_steps", RELEASE_ACCUM_STEPS, f"accum {RELEASE_ACCUM_STEPS}")
    influence = None
    weights, variants = knob("synpro.RewardsConfig.weights", {}), knob("synpro.RewardsConfig.variants", {})
    if weights.get("data_influence") and variants.get("data_influence", "data_influence") == "data_influence":
        influence = knob("synpro.grpo.influence_model", None)
        theta = knob("synpro.grpo.influence_checkpoint", None, path=True)
        if influence is None and isinstance(theta, str) and (Path(theta) / "config.json").exists():
            influence = hf.read_config(theta)
        if influence is None:
            filled.append("no model for data_influence's theta, so theta and theta' are not counted")
    source = "GRPO knobs from gin" + (f"; unbound, so: {', '.join(filled)}" if filled else "")
    return GRPOShapes(
        model,
        mesh,
        algorithm,
        prompts,
        accum,
        knob("synpro.GRPORunConfig.logits_chunk", None),
        knob("synpro.GRPORunConfig.share_prompts", True),
        source,
        influence,
    )


PROGRAMS = ("train", "grpo", "sampler")


def experiment_programs() -> tuple[str, ...]:
    """What the parsed experiment runs: the pretraining step when it binds synpro.TrainerConfig, the GRPO step and
    the sampler when it binds a GRPO generator (synpro.grpo)."""
    found = ("train",) if _is_bound("synpro.TrainerConfig.global_batch") else ()
    if _is_bound("synpro.grpo.generator") or _is_bound("synpro.grpo.model"):
        found += ("grpo", "sampler")
    return found


def compile_experiment(
    topology: str, hbm_bytes: int | None = None, programs: tuple[str, ...] | None = None
) -> list[MemoryReport]:
    """The parsed gin experiment's programs on ``topology`` (gin must be parsed already): ``programs`` among
    train (the pretraining step), grpo (the GRPO step) and sampler (the rollout's prefill and decode); None: what
    the experiment runs (:func:`experiment_programs`). TrainerConfig and GRPORunConfig are read knob by knob:
    constructing them would need their REQUIRED out_dir."""
    if programs is None:
        programs = experiment_programs()
        if not programs:
            raise ValueError(
                "the experiment binds neither synpro.TrainerConfig (pretraining) nor synpro.grpo "
                "(GRPO), so there is nothing to compile; name the programs with --programs=train,grpo,"
                "sampler"
            )
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise ValueError(f"--programs: unknown {unknown}; choose among {', '.join(PROGRAMS)}")
    reports = []
    if "train" in programs:
        if not _is_bound("synpro.TrainerConfig.global_batch"):
            raise ValueError("--programs=train: the experiment binds no synpro.TrainerConfig.global_batch")
        reports.append(
            train_step_memory(
                _read("synpro.pretrain.model"),
                _read("synpro.pretrain.mesh", MeshConfig()),
                _read("synpro.pretrain.optimizer"),
                _read("synpro.TrainerConfig.global_batch"),
                _read("synpro.TrainerConfig.seq_len"),
                _read("synpro.TrainerConfig.z_loss", 1e-5),
                _read("synpro.TrainerConfig.accum_steps", 1),
                topology,
                hbm_bytes=hbm_bytes,
            )
        )
    if "grpo" in programs or "sampler" in programs:
        s = grpo_shapes()
        if "grpo" in programs:
            reports.append(
                grpo_step_memory(
                    s.model,
                    s.mesh,
                    s.algorithm,
                    s.prompts_per_step,
                    s.accum_steps,
                    s.logits_chunk,
                    s.share_prompts,
                    topology,
                    hbm_bytes=hbm_bytes,
                    source=s.source,
                    influence=s.influence,
                )
            )
        if "sampler" in programs:
            reports += sampler_memory(
                s.model,
                s.mesh,
                s.algorithm,
                s.prompts_per_step,
                topology,
                hbm_bytes=hbm_bytes,
                source=s.source,
                influence=s.influence,
            )
    return reports


def to_json(reports: list[MemoryReport]) -> str:
    return json.dumps([r.as_dict() for r in reports], indent=2)
