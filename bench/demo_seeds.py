"""The demo over several seeds, ablations included (``synpro demo --full``): per arm the mean and spread over seeds
of every reading (test loss, test loss on the facts and QA accuracy, each at the last step and at the best
validation checkpoint) and of its multipliers over repetition and round 0 on the oracle ladder; the generators'
fact scores and GRPO rewards; the second round against SynPro continued; the synthetic streams' diversity.
Writes ``bench/results/demo_seeds.json`` with the load average and the commit.

    python bench/demo_seeds.py --seeds 0 1 2 --work runs/demo_seeds     # runs `synpro demo --full` per seed
    python bench/demo_seeds.py --collect runs/demo0 runs/demo1 ...      # summarizes finished demo directories
"""

from __future__ import annotations

import argparse
import json
import os
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
    """Oracle arms are named by their token budget, which differs by seed: the report's label names them by
    biographies per person ("oracle x2")."""
    return arm["arm"]


READINGS = ("test_loss_last", "test_loss_best", "fact_loss_last", "fact_loss_best", "qa_last", "qa_best")


def summarize(reports: list[dict]) -> dict:
    arms: dict[str, dict[str, list]] = {}
    for r in reports:
        for a in r["arms"]:
            d = arms.setdefault(_arm_key(a), {})
            for name in READINGS:
                d.setdefault(name, []).append(a.get(name))
                reading = a.get("readings", {}).get(name)
                for ref in ("repetition", "round 0"):
                    m = (reading or {}).get("multiplier", {}).get(ref, {})
                    # every finite value counts; its status (extrapolated, off the ladder) is kept beside it
                    finite = m.get("value") is not None and np.isfinite(m["value"])
                    d.setdefault(f"{name} x {ref}", []).append(m["value"] if finite else None)
                    d.setdefault(f"{name} x {ref} (status)", []).append(m.get("status"))
    conservative = [r.get("conservative") for r in reports]
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
    diversity: dict[str, dict[str, list]] = {}
    for r in reports:
        for d in r.get("diversity", []):
            name = d["stage"].split("/")[-2] + "/" + d["generator"] if "/" in d["stage"] else d["stage"]
            e = diversity.setdefault(name, {})
            for side in ("synthetic", "organic"):
                x = d.get(side) or {}
                e.setdefault(f"{side} distinct-2", []).append((x.get("distinct") or {}).get("2"))
                e.setdefault(f"{side} compression", []).append(x.get("compression_ratio"))
                e.setdefault(f"{side} near-duplicates", []).append(x.get("near_duplicate_share"))
    return {
        "seeds": [r["seed"] for r in reports],
        "conservative_reading": conservative,
        # per reading, per seed: why its ladder could not be read (empty: readable)
        "problems": {name: [r["readings"].get(name, {}).get("problems") for r in reports] for name in READINGS},
        "second_round": [r.get("second_round") for r in reports],
        "fit_status": [r["readings"].get("test_loss_last", {}).get("fit", {}).get("status") for r in reports],
        "test_hygiene": [r.get("test_hygiene") for r in reports],
        "arms": {a: {k: (v if k.endswith("(status)") else _stats(v)) for k, v in d.items()} for a, d in arms.items()},
        "diversity": {n: {k: _stats(v) for k, v in e.items()} for n, e in diversity.items()},
        "generators": {op: {k: _stats(v) for k, v in d.items()} for op, d in generators.items()},
    }


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


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
                [sys.executable, "-m", "synpro_jax.cli", "demo", "--full", "--out", str(out), "--seed", str(seed)],
                check=True,
            )
            seconds[seed] = round(time.perf_counter() - t0, 1)
            dirs.append(out)
    reports = [json.loads((d / "demo.json").read_text()) for d in dirs]
    result = {
        "benchmark": "synpro demo --full over seeds",
        "commit": _commit(),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "dirs": [str(d) for d in dirs],
        "seconds": seconds,
        **summarize(reports),
    }
    atomic.write_json(Path(args.out), result)
    for arm, s in result["arms"].items():
        parts = []
        for name in READINGS:
            m = s.get(f"{name} x repetition", {})
            if m.get("n"):
                parts.append(f"{name} {m['mean']:.2f} +- {m['std']:.2f} (n={m['n']})")
        print(f"{arm:<16} x repetition: " + "; ".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
