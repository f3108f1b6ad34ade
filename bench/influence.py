"""Cost of the influence scorers on one model: a plain forward pass, grad_dot's jvp mode, its per-example
gradient mode (reported as "exact"), and the probe's two-forward scoring, at two batch sizes.

Reports examples/s and XLA's planned peak memory (temporaries + arguments + outputs of the compiled program)
for each, plus jvp's cost relative to a forward pass and its speed-up over exact.
Goals: jvp at most 3x a forward pass, and at least 5x faster than exact at batch 32.

    python bench/influence.py [--preset cpu_small --seq 256 --batches 8,32]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

from synpro_jax import models  # noqa: E402
from synpro_jax.influence.kernel import _jvp, _per_example, example_losses  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "influence.json"


def timed(fn, args, reps):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batches", default="8,32")
    p.add_argument("--micro_batch", type=int, default=8, help="exact mode's per-example-gradient chunk")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)

    cfg = models.get_preset(args.preset)
    params = models.init_params(cfg, jax.random.key(0))
    params_ft = jax.tree.map(lambda x: x * 1.001, params)
    direction = jax.tree.map(lambda a, b: a - b, params_ft, params)
    results = []
    for b in (int(x) for x in args.batches.split(",")):
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, size=(b, args.seq + 1)))
        mask = jnp.ones(tokens.shape, jnp.float32)
        runs = {
            "forward": (lambda p, t, m: example_losses(cfg, p, t, m), (params, tokens, mask)),
            "jvp": (lambda p, d, t, m: _jvp(cfg, p, d, t, m), (params, direction, tokens, mask)),
            "exact": (
                lambda p, d, t, m: _per_example(cfg, p, d, t, m, args.micro_batch),
                (params, direction, tokens, mask),
            ),
            "probe_two_forward": (
                lambda p0, p1, t, m: example_losses(cfg, p0, t, m) - example_losses(cfg, p1, t, m),
                (params, params_ft, tokens, mask),
            ),
        }
        row = {"batch": b}
        for name, (fn, fargs) in runs.items():
            seconds, peak = timed(fn, fargs, args.reps)
            row[name] = {"seconds": seconds, "examples_per_s": b / seconds, "peak_bytes": peak}
            print(
                f"batch {b:3d} {name:18s} {b / seconds:9.1f} ex/s  {seconds * 1e3:8.1f} ms  peak "
                f"{(peak or 0) / 2**20:8.1f} MiB",
                flush=True,
            )
        row["jvp_over_forward"] = row["jvp"]["seconds"] / row["forward"]["seconds"]
        row["exact_over_jvp"] = row["exact"]["seconds"] / row["jvp"]["seconds"]
        print(
            f"batch {b}: jvp costs {row['jvp_over_forward']:.2f}x a forward; exact is "
            f"{row['exact_over_jvp']:.1f}x slower than jvp",
            flush=True,
        )
        results.append(row)

    report = {
        "benchmark": "influence",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "device": jax.devices()[0].device_kind},
        "preset": args.preset,
        "params": cfg.num_params(),
        "seq": args.seq,
        "exact_micro_batch": args.micro_batch,
        "results": results,
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
