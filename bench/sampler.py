"""Decode throughput of the in-graph sampler against HF transformers ``generate`` on the same weights.

For each preset a random model is exported with synpro_jax.models.hf.save; transformers loads that directory
(torch, KV cache on, greedy) and synpro_jax loads it with hf.load, so both run identical weights on identical
prompts in this one process. Every row generates exactly its new-token budget (no EOS).

Per (preset, dtype, batch):
- decode tokens/s: batch * (N2 - N1) / (t(N2) - t(N1)) from runs with N1 = 5/8 N2 and N2 new tokens (one sampler
  bucket, so the same compiled program), which cancels the prefill and per-call overhead on both sides. Ours and
  HF's runs are interleaved repeat by repeat and each t is the fastest of ``--repeats`` (the CPU may be shared);
- end-to-end tokens/s: batch * N2 / t(N2), prefill included;
- bytes per decode step: every matmul weight once plus K and V of the live cache (the filled slots only, in the
  cache's dtype), averaged over the timed steps; ``bandwidth_fraction`` = those bytes * steps/s / the read
  bandwidth of this machine (a jitted sum over 1 GiB, the best of a measurement before and after the runs).
  ``bytes_read_per_step`` counts what the sampler attends instead (its decode windows, sampler.decode_windows).
- whether greedy tokens equal HF's (random weights give near-tied logits, so long runs may part after a while).

How to run (the CPU report takes ~15 min on 2 cores; batch 128 of cpu_medium uses 64 new tokens, ``--short``):

    python bench/sampler.py              # cpu_small + cpu_medium, fp32, batch 1/8/32/128 -> results/sampler.json
    python bench/sampler.py --presets cpu_small --batches 32 --out /tmp/s.json     # one quick point
    python bench/sampler.py --presets olmo2_1b_instruct --dtypes bfloat16 --no_hf --batches 1,32,128 \\
        --out bench/results/sampler_h200.json   # GPU (keep the CPU report in results/sampler.json)
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


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn, repeats: int) -> float:
    return float(np.median([timed(fn) for _ in range(repeats)]))


def min_time(fn, repeats: int) -> float:
    return min(timed(fn) for _ in range(repeats))


def measure_read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a jitted full read (sum) of a float32 array much larger than the caches."""
    n = int(gib * 2**30 / 4)
    x = jnp.ones((n,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(x))
    return n * 4 / min_time(lambda: jax.block_until_ready(total(x)), repeats)


def bytes_per_step(cfg, batch: int, context: float, weight_bytes: int, cache_bytes: int) -> float:
    """What one decode step must read: every matmul weight once, plus K and V of the context for every row."""
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * context * batch * cache_bytes
    return cfg.num_matmul_params() * weight_bytes + kv


def mean_slots_read(prompt: int, first: int, new: int) -> float:
    """Mean KV slots a decode step attends over the timed steps [first, new): its window, prompt slots included."""
    prompt_slots = sampler_lib.bucket(prompt, sampler_lib.MIN_PROMPT_BUCKET)
    ends = sampler_lib.decode_windows(sampler_lib.bucket(new, sampler_lib.MIN_NEW_BUCKET), prompt_slots)
    return float(np.mean([prompt_slots + next(e for e in ends if t < e) for t in range(first, new)]))


def mean_live_slots(prompt: int, first: int, new: int) -> float:
    """Mean filled slots a decode step must attend over the timed steps [first, new): step t feeds completion
    token t, which attends the prompt and completion tokens 0..t."""
    return float(np.mean([prompt + t + 1 for t in range(first, new)]))


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


def bench_decode_attention(cfg, batch: int, prompt: int, window: int, repeats: int = 20) -> list[dict]:
    """One layer's decode attention (one query per row over a prompt prefix + a completion window, the sampler's
    layout) in two forms and two cache dtypes: ``dot_product_attention`` (batched mat-vecs, XLA's dot) and a
    multiply + reduce form (the elementwise shape a bandwidth-bound fused loop would take, which also converts
    a bf16 cache in the loop). Rates are cache bytes read / time; errors against the float32 dot form."""
    from synpro_jax.models.attention import dot_product_attention

    def multiply_reduce(q, k, v, mask, prefix):  # one query head per kv head (the CPU presets), 4-D throughout
        b, _, h, hd = q.shape
        qh = q.reshape(b, h, hd).astype(jnp.float32) * hd**-0.5

        def scores(keys):
            return jnp.sum(qh[:, :, None, :] * keys.astype(jnp.float32), axis=-1)

        s = jnp.concatenate([scores(prefix[0]), scores(k)], axis=-1)
        probs = jax.nn.softmax(jnp.where(mask, s, jnp.finfo(jnp.float32).min), axis=-1)
        s0 = prefix[0].shape[2]

        def mix(p, values):
            return jnp.sum(p[..., None] * values.astype(jnp.float32), axis=-2)

        return (mix(probs[..., :s0], prefix[1]) + mix(probs[..., s0:], v)).reshape(b, 1, h, hd)

    forms = {
        "dot_product_attention": lambda q, k, v, m, pre: dot_product_attention(q, k, v, m, pre),
        "multiply_reduce": multiply_reduce,
    }
    keys = jax.random.split(jax.random.key(0), 5)
    kv_shape = (batch, cfg.num_kv_heads, window, cfg.head_dim)
    pre_shape = (batch, cfg.num_kv_heads, prompt, cfg.head_dim)
    q = jax.random.normal(keys[0], (batch, 1, cfg.num_heads, cfg.head_dim))
    full = [jax.random.normal(kk, shp) for kk, shp in zip(keys[1:], (kv_shape, kv_shape, pre_shape, pre_shape))]
    mask = jnp.ones((batch, 1, prompt + window), bool)
    reference = jax.jit(forms["dot_product_attention"])(q, *full[:2], mask, tuple(full[2:]))
    rows = []
    for dtype in ("float32", "bfloat16"):
        k, v, kp, vp = (x.astype(dtype) for x in full)
        nbytes = sum(x.nbytes for x in (k, v, kp, vp))
        for name, form in forms.items():
            fn = jax.jit(form)
            out = jax.block_until_ready(fn(q, k, v, mask, (kp, vp)))
            seconds = min_time(
                lambda fn=fn, k=k, v=v, kp=kp, vp=vp: jax.block_until_ready(fn(q, k, v, mask, (kp, vp))), repeats
            )
            rows.append(
                {
                    "form": name,
                    "cache_dtype": dtype,
                    "batch": batch,
                    "slots": prompt + window,
                    "microseconds": seconds * 1e6,
                    "cache_gb_per_s": nbytes / seconds / 1e9,
                    "max_abs_error": float(jnp.max(jnp.abs(out.astype(jnp.float32) - reference))),
                }
            )
            print(rows[-1], flush=True)
    return rows


def budgets(new: int) -> tuple[int, int]:
    return new * 5 // 8, new


def ours_runner(sampler, prompts):
    def run(n):
        return lambda: sampler.generate(prompts, max_new_tokens=n)

    return run


def hf_runner(model, torch, prompts, device: str = "cpu"):
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
            return out[:, ids.shape[1] :].cpu().numpy()

        return go

    return run


def interleaved_times(runners: dict, new: int, repeats: int) -> dict:
    """{name: {n: fastest seconds}} for n in budgets(new), the runners taking turns repeat by repeat (so a busy
    moment of a shared CPU falls on both sides alike). The first run of each compiles / warms up."""
    for run in runners.values():
        for n in budgets(new):
            run(n)()
    best = {name: {n: float("inf") for n in budgets(new)} for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            for n in budgets(new):
                best[name][n] = min(best[name][n], timed(run(n)))
    return best


def parse_short(spec: str) -> dict:
    """'cpu_medium:128=64,...' -> {('cpu_medium', 128): 64}."""
    out = {}
    for item in filter(None, spec.split(",")):
        point, new = item.split("=")
        preset, batch = point.split(":")
        out[(preset, int(batch))] = int(new)
    return out


def git_commit() -> dict:
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.rstrip()

    mine = ["bench/sampler.py", "synpro_jax/generation", "synpro_jax/models"]
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain", "--", *mine).splitlines()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="cpu_small,cpu_medium")
    p.add_argument("--batches", default="1,8,32,128")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    p.add_argument(
        "--new",
        type=int,
        default=128,
        help="new tokens per row (a power of two; the decode rate is measured between 5/8 new and new)",
    )
    p.add_argument(
        "--short",
        default="cpu_medium:128=64",
        help="points run with fewer new tokens, PRESET:BATCH=NEW,... (the slowest point, to keep the run short)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per budget and side; the fastest counts")
    p.add_argument("--dtypes", default="float32", help="comma list of float32 / bfloat16")
    p.add_argument("--cache_dtype", default=None, help="the Sampler's KV cache dtype (default: its own choice)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for the peer")
    p.add_argument("--no_hf", action="store_true", help="skip the transformers peer")
    p.add_argument("--hf_device", default="cpu", help="torch device of the transformers peer (cuda on a GPU box)")
    p.add_argument(
        "--rollout",
        default="",
        help="also time GRPO rollouts: PROMPTS,G,PROMPT_TOKENS,NEW_TOKENS "
        "(shared prefill vs prompts written out), e.g. 4,8,512,256",
    )
    p.add_argument(
        "--attention",
        default="cpu_small:32",
        help="also time one layer's decode attention forms and cache dtypes at PRESET:BATCH ('' to skip)",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()

    torch = None
    if not args.no_hf:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
    started = time.time()
    gib = 1.0 if jax.default_backend() == "cpu" else 8.0
    bandwidths = [measure_read_bandwidth(gib)]
    short = parse_short(args.short)
    attention = []
    if args.attention:
        preset, batch = args.attention.split(":")
        attention = bench_decode_attention(models.get_preset(preset), int(batch), args.prompt, args.new)
    measured, rollouts = [], []
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
        sampler = Sampler(cfg, params, cache_dtype=args.cache_dtype)
        if args.rollout:
            n, g, plen, new = map(int, args.rollout.split(","))
            row = {"preset": name, "dtype": dtype, **bench_rollout(sampler, cfg, n, g, plen, new, args.repeats)}
            print(row, flush=True)
            rollouts.append(row)
        for batch in [int(b) for b in args.batches.split(",") if b]:
            new = short.get((name, batch), args.new)
            first, _ = budgets(new)
            rng = np.random.default_rng(batch)
            prompts = rng.integers(1, cfg.vocab_size, size=(batch, args.prompt)).tolist()
            load_before = os.getloadavg()
            runners = {"jax": ours_runner(sampler, prompts)}
            if model is not None:
                runners["hf"] = hf_runner(model, torch, prompts, args.hf_device)
            seconds = interleaved_times(runners, new, args.repeats)
            steps_s = {k: (new - first) / (t[new] - t[first]) for k, t in seconds.items()}
            cache_bytes = jnp.dtype(sampler.cache_dtype).itemsize
            live = mean_live_slots(args.prompt, first, new)
            slots_read = mean_slots_read(args.prompt, first, new)
            row = {
                "preset": name,
                "params": cfg.num_params(),
                "dtype": dtype,
                "cache_dtype": sampler.cache_dtype,
                "batch": batch,
                "prompt_tokens": args.prompt,
                "new_tokens": new,
                "timed_steps": [first, new],
                "loadavg_before": list(load_before),
                "loadavg_after": list(os.getloadavg()),
                "jax_decode_tokens_per_s": batch * steps_s["jax"],
                "jax_end_to_end_tokens_per_s": batch * new / seconds["jax"][new],
                "jax_seconds": {str(k): v for k, v in seconds["jax"].items()},
                "mean_live_slots": live,
                "mean_slots_read": slots_read,
                "bytes_per_step": bytes_per_step(cfg, batch, live, dtype_bytes, cache_bytes),
                "bytes_read_per_step": bytes_per_step(cfg, batch, slots_read, dtype_bytes, cache_bytes),
            }
            if new != args.new:
                row["note"] = f"fewer new tokens than the other points ({new}, not {args.new}): --short"
            if model is not None:
                hf_tokens = runners["hf"](new)()
                mine = sampler.generate(prompts, max_new_tokens=new).tokens
                row.update(
                    {
                        "hf_decode_tokens_per_s": batch * steps_s["hf"],
                        "hf_end_to_end_tokens_per_s": batch * new / seconds["hf"][new],
                        "hf_seconds": {str(k): v for k, v in seconds["hf"].items()},
                        "decode_speedup": steps_s["jax"] / steps_s["hf"],
                        "end_to_end_speedup": seconds["hf"][new] / seconds["jax"][new],
                        # random weights give near-tied logits, so long greedy runs may part after a while
                        "greedy_tokens_equal_fraction": float((hf_tokens == mine).mean()),
                        # transformers keeps its cache in the model dtype
                        "hf_bytes_per_step": bytes_per_step(cfg, batch, live, dtype_bytes, dtype_bytes),
                    }
                )
            print(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not isinstance(v, dict)},
                flush=True,
            )
            measured.append((row, steps_s))
    bandwidths.append(measure_read_bandwidth(gib))
    bandwidth = max(bandwidths)  # the machine's capability: a busy moment only lowers a measurement
    results = []
    for row, steps_s in measured:
        row["bandwidth_fraction"] = row["bytes_per_step"] * steps_s["jax"] / bandwidth
        if "hf" in steps_s:
            row["hf_bandwidth_fraction"] = row["hf_bytes_per_step"] * steps_s["hf"] / bandwidth
        results.append(row)
    goals = [
        {
            "preset": r["preset"],
            "batch": r["batch"],
            "decode_speedup": r.get("decode_speedup"),
            "bandwidth_fraction": r["bandwidth_fraction"],
            "speedup_at_least_3": None if "decode_speedup" not in r else r["decode_speedup"] >= 3,
            "bandwidth_fraction_at_least_half": r["bandwidth_fraction"] >= 0.5,
        }
        for r in results
        if r["batch"] == 32
    ]
    report = {
        "benchmark": "sampler decode throughput vs transformers generate",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": git_commit(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_seconds": time.time() - started,
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_threads": args.threads,
        "hf_device": None if torch is None else args.hf_device,
        "timing": f"fastest of {args.repeats} interleaved runs per budget and side",
        "measured_read_bandwidth_gb_s": bandwidth / 1e9,
        "read_bandwidth_measurements_gb_s": [b / 1e9 for b in bandwidths],
        "issue_26_goals_at_batch_32": goals,
        "results": results,
    }
    if attention:
        report["decode_attention_forms"] = attention
    if rollouts:
        report["rollouts"] = rollouts
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
