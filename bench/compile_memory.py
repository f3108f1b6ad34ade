"""Per-device memory of the pretraining step at 1B scale, compiled ahead of time for TPU topologies.

    pip install libtpu            # only the compiler is needed; no TPU
    python bench/compile_memory.py [--out bench/results/compile_memory.json]

For olmo_400m and olmo_1b at seq 2048 (global batch 512, the paper's setting) on v5e-8 and v4-32, it compiles the
step twice: as the model presets come (no remat, dense loss), and with the memory knobs (remat full, the loss in
512-token chunks, 16 micro-batches), and records XLA:TPU's memory analysis (or its out-of-HBM refusal). Where
libtpu cannot describe a topology, the row holds the reason and XLA:CPU's analysis of the same program on the
local devices instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from synpro_jax import atomic, models
from synpro_jax import compile as aot
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compile_memory.json"
SETTINGS = {
    "as_preset": dict(remat="none", loss_chunk=0, accum_steps=1),
    "memory_knobs": dict(remat="full", loss_chunk=512, accum_steps=16),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="olmo_400m,olmo_1b")
    p.add_argument("--topologies", default="v5e-8,v4-32")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    rows = []
    for topology in args.topologies.split(","):
        for name in args.models.split(","):
            for setting in args.settings.split(","):
                knobs = SETTINGS[setting]
                cfg = models.get_preset(name, dtype="bfloat16", remat=knobs["remat"], loss_chunk=knobs["loss_chunk"])
                t = time.perf_counter()
                try:
                    report, reason = aot.train_step_memory(cfg, MeshConfig(data=1, fsdp=-1), OptimizerConfig(),
                                                           args.batch, args.seq, 1e-5, knobs["accum_steps"],
                                                           topology), ""
                except RuntimeError as e:  # libtpu cannot describe the topology here
                    reason = str(e)
                    report = aot.train_step_memory(cfg, MeshConfig(data=1, fsdp=-1), OptimizerConfig(), args.batch,
                                                   args.seq, 1e-5, knobs["accum_steps"], "cpu")
                print(report.line() + (f" [fallback: {reason}]" if reason else ""), flush=True)
                rows.append({"topology": topology, "model": name, "setting": setting, **knobs,
                             **report.as_dict(), "fallback_reason": reason or None,
                             "compile_s": round(time.perf_counter() - t, 1)})
    result = {"jax": jax.__version__, "batch": args.batch, "seq": args.seq, "rows": rows,
              "note": "XLA:TPU ahead-of-time compilation through libtpu on a CPU-only machine; total = arguments + "
                      "outputs - aliased + temporaries + code, per device."}
    atomic.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
