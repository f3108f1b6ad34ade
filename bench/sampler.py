"""Decode throughput of the in-graph sampler against HF transformers ``generate`` on the same weights.

For each preset a random model is exported with synpro_jax.models.hf.save; transformers loads that directory
(torch CPU, KV cache on, greedy) and synpro_jax loads it with hf.load, so both run identical weights on identical
prompts in this one process. Every row generates exactly ``--new`` tokens (no EOS).

Two rates per (preset, dtype, batch):
- decode tokens/s: batch * (N2 - N1) / (t(N2) - t(N1)) from runs with N1 = 5/8 new and N2 = new new tokens (one
  sampler bucket, so the same compiled program), which cancels the prefill and per-call overhead on both sides;
- end-to-end tokens/s: batch * new / t(new), prefill included.
The memory-bandwidth fraction is (bytes that one decode step reads: matmul weights + the KV cache slots that
step attends, its decode window, see sampler.decode_windows) * steps/s / the measured read bandwidth of this
machine; ``context_bandwidth_fraction`` counts only the filled context instead of the window.

    python bench/sampler.py                                  # cpu_small and cpu_medium, batch 1, 8, 32
    python bench/sampler.py --presets olmo2_1b_instruct --dtypes bfloat16 --no_hf --batches 1,32,128   # GPU
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

from synpro_jax import models  # noqa: E402
from synpro_jax.generation import Sampler  # noqa: E402
from synpro_jax.generation import sampler as sampler_lib  # noqa: E402
from synpro_jax.models import hf  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sampler.json"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure_read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a jitted full read (sum) of a float32 array much larger than the caches."""
    n = int(gib * 2**30 / 4)
    x = jnp.ones((n,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(x))
    seconds = median_time(lambda: jax.block_until_ready(total(x)), repeats)
    return n * 4 / seconds


def bytes_per_step(cfg, batch: int, context: float, weight_bytes: int, cache_bytes: int) -> float:
    """What one decode step must read: every matmul weight once, plus K and V of the context for every row."""
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * context * batch * cache_bytes
    return cfg.num_matmul_params() * weight_bytes + kv


def mean_slots_read(prompt: int, first: int, new: int) -> float:
    """Mean KV slots a decode step attends over the timed steps [first, new): its window, prompt slots included."""
    prompt_slots = sampler_lib.bucket(prompt, sampler_lib.MIN_PROMPT_BUCKET)
    ends = sampler_lib.decode_windows(sampler_lib.bucket(new, sampler_lib.MIN_NEW_BUCKET), prompt_slots)
    return float(np.mean([prompt_slots + next(e for e in ends if t < e) for t in range(first, new)]))


def bench_rollout(sampler, cfg, prompts: int, groups: int, prompt: int, new: int, repeats: int) -> dict:
    """GRPO-shaped rollouts: ``prompts`` prompts x ``groups`` generations, one shared prefill per prompt
    (Sampler.rollout, device-resident batch) against the prompts written out ``groups`` times (Sampler.generate)."""
    rng = np.random.default_rng(0)
    unique = rng.integers(1, cfg.vocab_size, size=(prompts, prompt)).tolist()
    written_out = [p for p in unique for _ in range(groups)]
    kw = dict(max_new_tokens=new, temperature=1.0, top_p=0.9, seed=0)

    def shared():
        jax.block_until_ready(sampler.rollout(unique, num_generations=groups, **kw))

    def plain():
        sampler.generate(written_out, **kw)

    shared(), plain()  # compile
    t_shared, t_plain = median_time(shared, repeats), median_time(plain, repeats)
    rows = prompts * groups
    return {
        "prompts": prompts,
        "num_generations": groups,
        "prompt_tokens": prompt,
        "new_tokens": new,
        "shared_prefill_seconds": t_shared,
        "written_out_seconds": t_plain,
        "shared_tokens_per_s": rows * new / t_shared,
        "shared_prefill_speedup": t_plain / t_shared,
    }


def budgets(new: int) -> tuple[int, int]:
    return new * 5 // 8, new


def bench_ours(sampler, prompts, new: int, repeats: int) -> dict:
    def run(n):
        return lambda: sampler.generate(prompts, max_new_tokens=n)

    out = {}
    for n in budgets(new):
        run(n)()  # compile this bucket
        out[n] = median_time(run(n), repeats)
    return out


def bench_hf(model, torch, prompts, new: int, repeats: int, device: str = "cpu") -> tuple[dict, np.ndarray]:
    ids = torch.as_tensor(np.asarray(prompts), dtype=torch.long, device=device)
    mask = torch.ones_like(ids)

    def run(n):
        def go():
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                    eos_token_id=None,
                )
            if device != "cpu":
                torch.cuda.synchronize()
            return out

        return go

    out = {}
    tokens = run(new)()  # warm-up, and the tokens to compare
    for n in budgets(new):
        out[n] = median_time(run(n), repeats)
    return out, tokens[:, ids.shape[1] :].cpu().numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="cpu_small,cpu_medium")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    p.add_argument(
        "--new",
        type=int,
        default=128,
        help="new tokens per row (a power of two; the decode rate is measured between 5/8 new and new)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list of float32 / bfloat16")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for the peer")
    p.add_argument("--no_hf", action="store_true", help="skip the transformers peer")
    p.add_argument("--hf_device", default="cpu", help="torch device of the transformers peer (cuda on a GPU box)")
    p.add_argument(
        "--rollout",
        default="",
        help="also time GRPO rollouts: PROMPTS,G,PROMPT_TOKENS,NEW_TOKENS "
        "(shared prefill vs prompts written out), e.g. 4,8,512,256",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()

    torch = None
    if not args.no_hf:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
    bandwidth = measure_read_bandwidth(1.0 if jax.default_backend() == "cpu" else 8.0)
    results, rollouts = [], []
    runs = [(name, dtype) for name in args.presets.split(",") for dtype in args.dtypes.split(",")]
    for name, dtype in runs:
        dtype_bytes = 2 if dtype == "bfloat16" else 4
        cfg = models.get_preset(name)
        with tempfile.TemporaryDirectory() as tmp:
            hf.save(cfg, jax.device_get(models.init_params(cfg, jax.random.key(0))), tmp)
            loaded_cfg, params = hf.load(tmp)
            cfg = loaded_cfg.replace(dtype=dtype, name=name, scan_unroll=cfg.scan_unroll)
            model = None
            if torch is not None:
                model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=getattr(torch, dtype)).eval()
                model = model.to(args.hf_device)
        sampler = Sampler(cfg, params)
        if args.rollout:
            n, g, plen, new = map(int, args.rollout.split(","))
            row = {"preset": name, "dtype": dtype, **bench_rollout(sampler, cfg, n, g, plen, new, args.repeats)}
            print(row, flush=True)
            rollouts.append(row)
        for batch in [int(b) for b in args.batches.split(",") if b]:
            rng = np.random.default_rng(batch)
            prompts = rng.integers(1, cfg.vocab_size, size=(batch, args.prompt)).tolist()
            ours = bench_ours(sampler, prompts, args.new, args.repeats)
            first, _ = budgets(args.new)
            decode_steps_s = (args.new - first) / (ours[args.new] - ours[first])
            row = {
                "preset": name,
                "params": cfg.num_params(),
                "dtype": dtype,
                "cache_dtype": sampler.cache_dtype,
                "batch": batch,
                "prompt_tokens": args.prompt,
                "new_tokens": args.new,
                "jax_decode_tokens_per_s": batch * decode_steps_s,
                "jax_end_to_end_tokens_per_s": batch * args.new / ours[args.new],
                "jax_seconds": {str(k): v for k, v in ours.items()},
            }
            context = args.prompt + (first + args.new) / 2  # mean context over the timed part of the decode
            slots_read = mean_slots_read(args.prompt, first, args.new)
            cache_bytes = jnp.dtype(sampler.cache_dtype).itemsize
            step_bytes = bytes_per_step(cfg, batch, slots_read, dtype_bytes, cache_bytes)
            row.update({"mean_context": context, "mean_slots_read": slots_read, "bytes_per_decode_step": step_bytes})
            if bandwidth:
                row["bandwidth_fraction"] = step_bytes * decode_steps_s / bandwidth
                row["context_bandwidth_fraction"] = (
                    bytes_per_step(cfg, batch, context, dtype_bytes, cache_bytes) * decode_steps_s / bandwidth
                )
            if model is not None:
                theirs, hf_tokens = bench_hf(model, torch, prompts, args.new, args.repeats, args.hf_device)
                hf_steps_s = (args.new - first) / (theirs[args.new] - theirs[first])
                mine = sampler.generate(prompts, max_new_tokens=args.new).tokens
                row.update(
                    {
                        "hf_decode_tokens_per_s": batch * hf_steps_s,
                        "hf_end_to_end_tokens_per_s": batch * args.new / theirs[args.new],
                        "hf_seconds": {str(k): v for k, v in theirs.items()},
                        "decode_speedup": decode_steps_s / hf_steps_s,
                        "end_to_end_speedup": theirs[args.new] / ours[args.new],
                        # random weights give near-tied logits, so long greedy runs may part after a while
                        "greedy_tokens_equal_fraction": float((hf_tokens == mine).mean()),
                        # transformers keeps its cache in the model dtype
                        "hf_bandwidth_fraction": (
                            bytes_per_step(cfg, batch, context, dtype_bytes, dtype_bytes) * hf_steps_s / bandwidth
                        )
                        if bandwidth
                        else None,
                    }
                )
            print(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not isinstance(v, dict)},
                flush=True,
            )
            results.append(row)
    report = {
        "benchmark": "sampler decode throughput vs transformers generate",
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_threads": args.threads,
        "hf_device": None if torch is None else args.hf_device,
        "measured_read_bandwidth_gb_s": None if bandwidth is None else bandwidth / 1e9,
        "results": results,
    }
    if rollouts:
        report["rollouts"] = rollouts
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
