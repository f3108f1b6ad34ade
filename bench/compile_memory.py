"""Per-device memory of SynPro's programs at 1B scale, compiled ahead of time for TPU topologies.

    pip install libtpu            # only the compiler is needed; no TPU
    python bench/compile_memory.py [--programs train,grpo,sampler,experiments] [--out bench/results/compile_memory.json]

train: olmo_400m and olmo_1b at seq 2048 (global batch 512, the paper's setting), compiled twice: as the model
presets come (no remat, dense loss), and with the memory knobs (remat full, the loss in 512-token chunks, 16
micro-batches). grpo: the generator (olmo2_1b_instruct, bf16) at the release's GRPO shapes (G 8, 2048 prompt +
2048 completion tokens, 4 prompts per data shard), as the preset comes (no remat, the output head over all
completion slots, 4 micro-batches) and with the memory knobs (remat full, the head over 256 slots at a time, 8
micro-batches); the frozen reference and the sampler's weights count as resident. sampler: that generator's
rollout prefill and decode at the same shapes, beside the learner's state and reference. All on an fsdp mesh
over every device. experiments: each shipped TPU experiment (gin/experiments/*.gin with a `# topology:` line)
on the topologies it names, as `synpro compile` compiles it. Each row records XLA:TPU's memory analysis (or its
out-of-HBM refusal). Where libtpu cannot describe a topology, the row is XLA:CPU's estimate on as many CPU devices
as it has chips (its target says so).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import re
import time

import jax

from synpro_jax import atomic, models
from synpro_jax import compile as aot
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compile_memory.json"
SETTINGS = {
    "as_preset": {"remat": "none", "loss_chunk": 0, "accum_steps": 1},
    "memory_knobs": {"remat": "full", "loss_chunk": 512, "accum_steps": 16},
}
GRPO_SETTINGS = {
    "as_preset": {"remat": "none", "logits_chunk": None, "accum_steps": 4},
    "memory_knobs": {"remat": "full", "logits_chunk": 256, "accum_steps": 8},
}
MESH = MeshConfig(data=1, fsdp=-1)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "gin" / "experiments"


def shipped_experiments() -> list[tuple[str, str]]:
    """(experiment file, topology) for every `# topology: A, B` line of gin/experiments/*.gin."""
    found = []
    for path in sorted(EXPERIMENTS.glob("*.gin")):
        match = re.search(r"^#\s*topology:\s*(.+)$", path.read_text(), re.MULTILINE)
        if match:
            found += [(f"gin/experiments/{path.name}", t.strip()) for t in match.group(1).split(",") if t.strip()]
    return found


def compile_experiment(gin_file: str, topology: str) -> list:
    """The experiment's programs as `synpro compile` builds them (its unset REQUIRED macros are placeholders)."""
    import gin

    from synpro_jax import configs

    configs.parse([gin_file], aot.placeholder_bindings(aot.unset_macros([gin_file], [])))
    try:
        return aot.compile_experiment(topology)
    finally:
        gin.clear_config()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", default="train,grpo,sampler,experiments")
    p.add_argument("--models", default="olmo_400m,olmo_1b", help="pretraining models (train)")
    p.add_argument("--generator", default=aot.GENERATOR_PRESET, help="the GRPO generator's preset (grpo, sampler)")
    p.add_argument("--topologies", default="v5e-8,v4-32")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    programs = args.programs.split(",")
    rows = []
    # Without libtpu, CPU devices stand in for the chips: as many as the largest topology has, before JAX starts.
    aot.use_cpu_devices(max(aot.chip_count(t) for t in args.topologies.split(",")))

    def record(compile_fn, topology, **fields):
        t = time.perf_counter()
        reports = compile_fn(topology)
        reports = reports if isinstance(reports, list) else [reports]
        for report in reports:
            print(report.line(), flush=True)
            rows.append(
                {
                    "topology": topology,
                    **fields,
                    **report.as_dict(),
                    "xla_cpu_estimate": report.target.startswith("XLA:CPU"),
                    "compile_s": round((time.perf_counter() - t) / len(reports), 1),
                }
            )

    for topology in args.topologies.split(","):
        if "train" in programs:
            for name in args.models.split(","):
                for setting in args.settings.split(","):
                    knobs = SETTINGS[setting]
                    cfg = models.get_preset(
                        name, dtype="bfloat16", remat=knobs["remat"], loss_chunk=knobs["loss_chunk"]
                    )
                    record(
                        lambda t, cfg=cfg, accum=knobs["accum_steps"]: aot.train_step_memory(
                            cfg, MESH, OptimizerConfig(), args.batch, args.seq, 1e-5, accum, t
                        ),
                        topology,
                        program="train_step",
                        model=name,
                        setting=setting,
                        **knobs,
                    )
        generator = models.get_preset(args.generator, dtype="bfloat16")
        if "grpo" in programs:
            for setting in args.settings.split(","):
                knobs = GRPO_SETTINGS[setting]
                cfg = generator.replace(remat=knobs["remat"])
                record(
                    lambda t, cfg=cfg, knobs=knobs: aot.grpo_step_memory(
                        cfg, MESH, GRPOConfig(), None, knobs["accum_steps"], knobs["logits_chunk"], True, t
                    ),
                    topology,
                    program="grpo_step",
                    model=args.generator,
                    setting=setting,
                    **knobs,
                )
        if "sampler" in programs:
            record(
                lambda t, g=generator: aot.sampler_memory(g, MESH, GRPOConfig(), None, t),
                topology,
                program="sampler",
                model=args.generator,
                setting="as_preset",
            )
    if "experiments" in programs:
        for gin_file, topology in shipped_experiments():
            record(
                lambda t, f=gin_file: compile_experiment(f, t),
                topology,
                program="experiment",
                experiment=gin_file,
                setting="as_shipped",
            )
    result = {
        "jax": jax.__version__,
        "batch": args.batch,
        "seq": args.seq,
        "rows": rows,
        "libtpu": _libtpu_version(),
        "note": "XLA:TPU ahead-of-time compilation through libtpu on a CPU-only machine; total = arguments + "
        "outputs - aliased + temporaries + code + resident (buffers held beside the program), per "
        "device. grpo and sampler rows: the release's GRPO shapes (GRPOConfig defaults, 4 prompts "
        "per data shard). experiment rows: the shipped TPU experiments as synpro compile builds "
        "them (their GRPO resident includes data_influence's theta and theta').",
    }
    atomic.write_json(args.out, result)
    print(f"wrote {args.out}")


def _libtpu_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("libtpu")
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
