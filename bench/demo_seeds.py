"""The demo over several seeds: mean and spread of each arm's held-out loss, QA accuracy, effective tokens and
multiplier over repetition, and of the generators' fact scores and GRPO rewards. Writes
``bench/results/demo_seeds.json``.

    python bench/demo_seeds.py --seeds 0 1 2 --work runs/demo_seeds     # runs `synpro demo` per seed (resumable)
    python bench/demo_seeds.py --collect runs/demo0 runs/demo1 ...      # summarizes finished demo directories
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import subprocess
import sys
import time

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synpro_jax import atomic  # noqa: E402


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if not v.size:
        return {"n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
        "values": [float(x) for x in v],
    }


def _arm_key(arm: dict) -> str:
    """Oracle arms are named by their token budget, which differs by seed: key them by biographies per person."""
    return f"oracle_x{arm['biographies_per_person']}" if arm["arm"].startswith("oracle_") else arm["arm"]


def summarize(reports: list[dict]) -> dict:
    arms: dict[str, dict[str, list]] = {}
    for r in reports:
        for a in r["arms"]:
            d = arms.setdefault(
                _arm_key(a), {"heldout_loss": [], "qa_accuracy": [], "effective_tokens": [], "multiplier": []}
            )
            d["heldout_loss"].append(a["heldout_loss"])
            d["qa_accuracy"].append(a["qa_accuracy"])
            d["effective_tokens"].append((a.get("effective_tokens") or {}).get("value"))
            d["multiplier"].append((a.get("multiplier") or {}).get("value"))
    generators: dict[str, dict[str, list]] = {}
    for r in reports:
        for op, g in r["generators"].items():
            d = generators.setdefault(
                op,
                {
                    "fact_score_before": [],
                    "fact_score_after_same_people": [],
                    "fact_score_synthesized": [],
                    "faithfulness_first": [],
                    "faithfulness_last": [],
                    "total_first": [],
                    "total_last": [],
                },
            )
            d["fact_score_before"].append((g.get("before_grpo") or {}).get("fact_score"))
            d["fact_score_after_same_people"].append(g["after_grpo"].get("fact_score_before_people"))
            d["fact_score_synthesized"].append(g["after_grpo"].get("fact_score"))
            curve = g["rewards"]
            k = max(1, len(curve) // 4)
            for name in ("faithfulness", "total"):
                d[f"{name}_first"].append(float(np.mean([c[name] for c in curve[:k]])) if curve else None)
                d[f"{name}_last"].append(float(np.mean([c[name] for c in curve[-k:]])) if curve else None)
    return {
        "seeds": [r["seed"] for r in reports],
        "arms": {a: {k: _stats(v) for k, v in d.items()} for a, d in arms.items()},
        "generators": {op: {k: _stats(v) for k, v in d.items()} for op, d in generators.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--work", default="runs/demo_seeds")
    p.add_argument("--collect", nargs="*", help="finished demo directories to summarize instead of running")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_seeds.json"))
    args = p.parse_args()
    seconds = {}
    if args.collect:
        dirs = [Path(d) for d in args.collect]
    else:
        dirs = []
        for seed in args.seeds:
            out = Path(args.work) / f"seed{seed}"
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "synpro_jax.cli", "demo", "--out", str(out), "--seed", str(seed)], check=True
            )
            seconds[seed] = round(time.perf_counter() - t0, 1)
            dirs.append(out)
    reports = [json.loads((d / "demo.json").read_text()) for d in dirs]
    result = {
        "benchmark": "synpro demo over seeds",
        "dirs": [str(d) for d in dirs],
        "seconds": seconds,
        **summarize(reports),
    }
    atomic.write_json(Path(args.out), result)
    for arm, s in result["arms"].items():
        m, q = s["multiplier"], s["qa_accuracy"]
        print(
            f"{arm:<14} multiplier {m.get('mean', float('nan')):.2f} +- {m.get('std', float('nan')):.2f}   "
            f"QA {q.get('mean', float('nan')):.3f} +- {q.get('std', float('nan')):.3f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
