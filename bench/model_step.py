"""Train-step throughput and MFU of synpro_jax, against HF transformers (torch) doing the same step.

Both sides run forward + backward + grad-norm clipping + AdamW on the same OLMo-2 config, the same weights
(exported with synpro_jax.models.hf.save and loaded by transformers), the same batch and sequence length, in this
one process. MFU uses 6N + attention FLOPs per token (ModelConfig.train_flops_per_token) against the peak
matmul rate measured here (or --peak_tflops on an accelerator).

    python bench/model_step.py                      # the two CPU presets, JSON to bench/results/
    python bench/model_step.py --presets olmo_400m --seq 2048 --batch 8 --dtypes bfloat16 --no_hf   # on a GPU

The GPU MFU check (bf16, seq 2048, every attention and remat policy, layers scanned and unscanned), on one
H100/H200; --remat, --attention and --scan_layers take comma lists and every combination runs:

    python bench/model_step.py --presets olmo_400m,olmo_1b --seq 2048 --batch 8 --dtypes bfloat16 \
        --attention cudnn,xla --remat projections,dots_saveable,full --scan_layers false,true --loss_chunk 512 \
        --gpu_xla_flags --no_hf --peak_tflops 989 --out bench/results/model_step_gpu_mfu.json

MaxText's 1B GPU settings are the reference: matmul outputs saved rather than recomputed (--remat projections or
dots_saveable), layers unscanned (--scan_layers false), the bf16 head matmul with float32 logits after (what
synpro_jax's unembed always does in bf16), and its GPU XLA flags (--gpu_xla_flags, set before JAX starts).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.models import hf  # noqa: E402
from synpro_jax.models.config import REMAT_POLICIES  # noqa: E402
from synpro_jax.train import OptimizerConfig, TrainStep, next_token_batch  # noqa: E402
from synpro_jax.train.metrics import measure_matmul_flops  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_step.json"


def time_steps(run_one, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run_one()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        run_one()
        times.append(time.perf_counter() - t)
    return times


def bench_jax(cfg, params, tokens, steps, warmup, opt_cfg):
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1, 1))
    step = TrainStep(cfg, mesh, opt_cfg, z_loss=0.0)
    state = step.init(jax.random.key(0), params=params)
    batch = step.shard_batch(next_token_batch(tokens))
    t = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    box = {"state": state}

    def run_one():
        box["state"], metrics = step(box["state"], batch)
        jax.block_until_ready(metrics)

    return time_steps(run_one, steps, warmup), compile_s, float(m["loss"])


def bench_hf(model_dir, tokens, steps, warmup, opt_cfg, threads, dtype):
    import contextlib

    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=opt_cfg.learning_rate,
        betas=(opt_cfg.b1, opt_cfg.b2),
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
    )
    x = torch.as_tensor(tokens, dtype=torch.long)
    inputs, labels = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    first = {}

    # fp32 master weights either way; bf16 runs under autocast, as mixed-precision torch training does
    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()

    def run_one():
        with autocast():
            logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        first.setdefault("loss", float(loss.detach()))

    times = time_steps(run_one, steps, warmup)
    return times, first["loss"], model.config._attn_implementation


def summarize(times, tokens_per_step, flops_per_token, peak):
    median = float(np.median(times))
    tps = tokens_per_step / median
    return {
        "step_s_median": median,
        "step_s_min": float(np.min(times)),
        "tokens_per_s": tps,
        "tflops_per_s": tps * flops_per_token / 1e12,
        "mfu": tps * flops_per_token / peak,
    }


# MaxText's XLA flags for GPU training (its gpu_multi_process / end-to-end GPU scripts): the latency-hiding
# scheduler, no Triton GEMMs (cuBLAS wins at these shapes), command buffers off.
GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_command_buffer=",
)


def _commit() -> str | None:
    """The repository commit the numbers were taken at (with '+dirty' for uncommitted changes)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def bench_preset(name, dtype, peak, args, opt_cfg, threads, remat="none", attention="auto", scan_layers=True) -> dict:
    cfg = models.get_preset(
        name, dtype=dtype, remat=remat, attention=attention, loss_chunk=args.loss_chunk, scan_layers=scan_layers
    )
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1))
    params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    fpt = cfg.train_flops_per_token(args.seq)
    tokens_per_step = args.batch * args.seq
    row = {
        "preset": name,
        "params": cfg.num_params(),
        "batch": args.batch,
        "seq": args.seq,
        "dtype": dtype,
        "flops_per_token": fpt,
        "attention": cfg.attention,
        "loss_chunk": cfg.loss_chunk,
        "remat": cfg.remat,
        "scan_layers": cfg.scan_layers,
    }
    times, compile_s, jax_loss = bench_jax(cfg, params, tokens, args.steps, args.warmup, opt_cfg)
    row["jax"] = {**summarize(times, tokens_per_step, fpt, peak), "compile_s": compile_s, "first_loss": jax_loss}
    knobs = f"{cfg.attention}/{cfg.remat}/{'scan' if cfg.scan_layers else 'unscanned'}"
    print(
        f"[{name} {dtype} {knobs}] jax  {row['jax']['tokens_per_s']:10,.0f} tok/s  MFU {row['jax']['mfu']:.1%}  "
        f"(step {row['jax']['step_s_median']:.3f}s, compile {compile_s:.1f}s)",
        flush=True,
    )
    if not args.no_hf:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = hf.save(cfg, params, Path(tmp) / name)
            times, hf_loss, attn = bench_hf(model_dir, tokens, args.steps, args.warmup, opt_cfg, threads, dtype)
        row["hf_transformers"] = {
            **summarize(times, tokens_per_step, fpt, peak),
            "first_loss": hf_loss,
            "attn_implementation": attn,
            "torch_threads": threads,
        }
        row["speedup_vs_hf"] = row["jax"]["tokens_per_s"] / row["hf_transformers"]["tokens_per_s"]
        # same weights and batch: the first-step losses must agree (a cheap check both ran the same model)
        row["first_loss_abs_diff"] = abs(jax_loss - hf_loss)
        print(
            f"[{name} {dtype}] hf   {row['hf_transformers']['tokens_per_s']:10,.0f} tok/s  MFU "
            f"{row['hf_transformers']['mfu']:.1%}  -> jax/hf = {row['speedup_vs_hf']:.2f}x "
            f"(first-loss diff {row['first_loss_abs_diff']:.1e})",
            flush=True,
        )
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="cpu_small,cpu_medium")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32 / bfloat16")
    p.add_argument("--remat", default="none", help=f"comma list of {', '.join(REMAT_POLICIES)}")
    p.add_argument(
        "--attention",
        default="auto",
        help="comma list of ModelConfig.attention values: auto, reference, xla, cudnn, splash",
    )
    p.add_argument("--scan_layers", default="true", help="comma list of true / false (false: layers unrolled)")
    p.add_argument(
        "--gpu_xla_flags",
        action="store_true",
        help="add MaxText's GPU XLA flags (GPU_XLA_FLAGS) to XLA_FLAGS; needs a fresh process",
    )
    p.add_argument("--loss_chunk", type=int, default=0, help="ModelConfig.loss_chunk (0: the dense loss)")
    p.add_argument("--no_hf", action="store_true", help="skip the transformers peer (e.g. on a GPU box)")
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="device peak for MFU (e.g. 989 for H100 bf16 dense); default: measured matmul rate",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    remats = args.remat.split(",")
    bad = [r for r in remats if r not in REMAT_POLICIES]
    if bad:
        p.error(f"--remat {','.join(bad)}: choose from {', '.join(REMAT_POLICIES)}")
    scans = {"true": True, "false": False}
    if any(v not in scans for v in args.scan_layers.split(",")):
        p.error(f"--scan_layers={args.scan_layers}: a comma list of true / false")
    if args.gpu_xla_flags:
        if jax._src.xla_bridge.backends_are_initialized():
            p.error("--gpu_xla_flags must be set before JAX starts its backend")
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {' '.join(GPU_XLA_FLAGS)}".strip()

    threads = os.cpu_count() or 1
    opt_cfg = OptimizerConfig(learning_rate=1e-4, warmup_steps=0)
    results, peaks = [], {}
    for dtype in args.dtypes.split(","):
        measured = measure_matmul_flops(jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
        peak = args.peak_tflops * 1e12 if args.peak_tflops else measured
        peaks[dtype] = {"measured_matmul_flops": measured, "mfu_denominator_flops": peak}
        print(
            f"device {jax.devices()[0].device_kind} x{jax.device_count()} | measured {dtype} matmul peak "
            f"{measured / 1e9:,.1f} GFLOP/s | MFU denominator {peak / 1e9:,.1f} GFLOP/s",
            flush=True,
        )
        for name in args.presets.split(","):
            for remat in remats:
                for attention in args.attention.split(","):
                    for scan in args.scan_layers.split(","):
                        results.append(
                            bench_preset(name, dtype, peak, args, opt_cfg, threads, remat, attention, scans[scan])
                        )

    import importlib.metadata as md

    versions = {pkg: md.version(pkg) for pkg in ("jax", "flax", "optax")}
    if not args.no_hf:
        versions.update({pkg: md.version(pkg) for pkg in ("torch", "transformers")})
    report = {
        "benchmark": "model_step",
        "commit": _commit(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "device": jax.devices()[0].device_kind,
            "device_count": jax.device_count(),
        },
        "versions": versions,
        "peak_flops": peaks,
        "results": results,
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
