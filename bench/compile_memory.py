"""Per-device memory of SynPro's programs at 1B scale, compiled ahead of time for TPU topologies.

    pip install libtpu            # only the compiler is needed; no TPU
    python bench/compile_memory.py [--programs train,grpo,sampler] [--out bench/results/compile_memory.json]

train: olmo_400m and olmo_1b at seq 2048 (global batch 512, the paper's setting), compiled twice: as the model
presets come (no remat, dense loss), and with the memory knobs (remat full, the loss in 512-token chunks, 16
micro-batches). grpo: the generator (olmo2_1b_instruct, bf16) at the release's GRPO shapes (G 8, 2048 prompt +
2048 completion tokens, 4 prompts per data shard), as the preset comes (no remat, the output head over all
completion slots, 4 micro-batches) and with the memory knobs (remat full, the head over 256 slots at a time, 8
micro-batches); the frozen reference and the sampler's weights count as resident. sampler: that generator's
rollout prefill and decode at the same shapes, beside the learner's state and reference. All on an fsdp mesh
over every device. Each row records XLA:TPU's memory analysis (or its out-of-HBM refusal). Where libtpu cannot
describe a topology, the row holds the reason and XLA:CPU's analysis of the same program on the local devices.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from synpro_jax import atomic, models
from synpro_jax import compile as aot
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compile_memory.json"
SETTINGS = {
    "as_preset": dict(remat="none", loss_chunk=0, accum_steps=1),
    "memory_knobs": dict(remat="full", loss_chunk=512, accum_steps=16),
}
GRPO_SETTINGS = {
    "as_preset": dict(remat="none", logits_chunk=None, accum_steps=4),
    "memory_knobs": dict(remat="full", logits_chunk=256, accum_steps=8),
}
MESH = MeshConfig(data=1, fsdp=-1)


def on_topology(compile_fn, topology: str) -> tuple[list, str]:
    """compile_fn(topology) -> reports; XLA:CPU's instead (and the reason) where libtpu cannot make it."""
    try:
        reports, reason = compile_fn(topology), ""
    except RuntimeError as e:  # libtpu cannot describe the topology here
        reports, reason = compile_fn("cpu"), str(e)
    return reports if isinstance(reports, list) else [reports], reason


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", default="train,grpo,sampler")
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

    def record(compile_fn, topology, **fields):
        t = time.perf_counter()
        reports, reason = on_topology(compile_fn, topology)
        for report in reports:
            print(report.line() + (f" [fallback: {reason}]" if reason else ""), flush=True)
            rows.append({"topology": topology, **fields, **report.as_dict(), "fallback_reason": reason or None,
                         "compile_s": round((time.perf_counter() - t) / len(reports), 1)})

    for topology in args.topologies.split(","):
        if "train" in programs:
            for name in args.models.split(","):
                for setting in args.settings.split(","):
                    knobs = SETTINGS[setting]
                    cfg = models.get_preset(name, dtype="bfloat16", remat=knobs["remat"],
                                            loss_chunk=knobs["loss_chunk"])
                    record(lambda t: aot.train_step_memory(cfg, MESH, OptimizerConfig(), args.batch, args.seq, 1e-5,
                                                           knobs["accum_steps"], t),
                           topology, program="train_step", model=name, setting=setting, **knobs)
        generator = models.get_preset(args.generator, dtype="bfloat16")
        if "grpo" in programs:
            for setting in args.settings.split(","):
                knobs = GRPO_SETTINGS[setting]
                cfg = generator.replace(remat=knobs["remat"])
                record(lambda t: aot.grpo_step_memory(cfg, MESH, GRPOConfig(), None, knobs["accum_steps"],
                                                      knobs["logits_chunk"], True, t),
                       topology, program="grpo_step", model=args.generator, setting=setting, **knobs)
        if "sampler" in programs:
            record(lambda t: aot.sampler_memory(generator, MESH, GRPOConfig(), None, t), topology,
                   program="sampler", model=args.generator, setting="as_preset")
    result = {"jax": jax.__version__, "batch": args.batch, "seq": args.seq, "rows": rows,
              "note": "XLA:TPU ahead-of-time compilation through libtpu on a CPU-only machine; total = arguments + "
                      "outputs - aliased + temporaries + code + resident (buffers held beside the program), per "
                      "device. grpo and sampler rows: the release's GRPO shapes (GRPOConfig defaults, 4 prompts "
                      "per data shard)."}
    atomic.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
