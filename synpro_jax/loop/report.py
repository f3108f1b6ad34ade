"""What a SynPro loop reports as it goes and at the end: one TensorBoard run per run of the experiment (every stage
on one global step), validation loss over pretraining tokens with the rounds marked (``loop_summary.png``), and
the summary (``loop_summary.json``): each run's rounds, its evaluations and the effective-token fit."""

from __future__ import annotations

import json
import math

from etils.epath import Path

from synpro_jax.eval import effective_tokens as et
from synpro_jax.loop.experiment import Experiment
from synpro_jax.loop.plan import StagePlan
from synpro_jax.train.metrics import TensorBoard, save_png

__all__ = ["Board", "resolver", "curves", "plot", "summarize"]


def resolver(run: str):
    """Plan keys ("r1/grpo_reformat") to manifest keys ("r1/synpro/grpo_reformat"); round 0 is shared."""

    def resolve(key: str) -> str:
        round_, name = key.split("/", 1)
        return key if round_ == "r0" else f"{round_}/{run}/{name}"

    return resolve


class Board:
    """The experiment's TensorBoard runs (process 0), rebuilt from the stages' own metrics on every start, so a
    resumed loop logs each step exactly once. Global step: the stages' steps laid end to end, in run order."""

    def __init__(self, root: Path, runs: list[str], enabled: bool):
        self.enabled, self.writers, self.offset = enabled, {}, {r: 0 for r in runs}
        if not enabled:
            return
        for run in runs:
            directory = root / "tensorboard" / run
            if directory.exists():
                directory.rmtree()
            self.writers[run] = TensorBoard(directory)

    def stage(self, runs: list[str], exp: Experiment, plan: StagePlan, outputs: dict) -> None:
        if not self.enabled:
            return
        records = []
        if plan.kind in ("pretrain", "grpo"):
            path = exp.path(outputs["dir"]) / "metrics.jsonl"
            if path.exists():
                records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        for run in runs:
            writer, base = self.writers[run], self.offset[run]
            for rec in records:
                for key, value in rec.items():
                    if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                        writer.add_scalar(f"{plan.name}/{key}", value, base + int(rec["step"]))
            span = int(outputs.get("step", outputs.get("steps", 0)) or 0) if records else 0
            if plan.kind == "eval":
                for task, scores in outputs.get("tasks", {}).items():
                    for key in ("acc", "acc_norm"):
                        writer.add_scalar(f"eval/{task}/{key}", scores[key], base)
                for name, scores in outputs.get("perplexity", {}).items():
                    writer.add_scalar(f"eval/{name}/ppl", scores["ppl"], base)
                if outputs.get("val_loss") is not None:
                    writer.add_scalar("eval/val_loss", outputs["val_loss"], base)
                    writer.add_scalar("eval/round", plan.round, base)
            if plan.kind == "synthesize":
                writer.add_scalar(f"{plan.name}/records", outputs["records"], base)
            writer.flush()
            self.offset[run] = base + max(span, 1)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def curves(exp: Experiment, done: dict[str, dict], runs: list[str]) -> dict[str, dict]:
    """Per run: validation loss over pretraining tokens, and the token count at the end of each round."""
    out = {}
    for run in runs:
        points, bounds = [], []
        for r in range(exp.cfg.rounds + 1):
            o = done.get(resolver(run)(f"r{r}/pretrain"))
            if o is None:
                break
            path = exp.path(o["dir"]) / "metrics.jsonl"
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    rec = json.loads(line) if line else {}
                    if "val_loss" in rec:
                        points.append(((o["start_step"] + rec["step"]) * o["tokens_per_step"], rec["val_loss"]))
            bounds.append(o["tokens"])
        out[run] = {"points": points, "round_ends": bounds}
    return out


def plot(path: Path, curves: dict[str, dict]) -> None:
    import matplotlib  # only process 0 draws: the other hosts never import it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ends = []
    for run, c in curves.items():
        if c["points"]:
            ax.plot(*zip(*c["points"]), "o-", ms=3, lw=1.2, label=run)
        ends = max(ends, c["round_ends"], key=len)
    for r, x in enumerate(ends):
        ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.annotate(
            f"end of r{r}",
            (x, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="grey",
        )
    ax.set_xlabel("pretraining tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("SynPro loop: validation loss by round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def unique_read(rounds: list[dict]) -> dict:
    """D, the distinct organic tokens a run read over its rounds, from what each pretraining stage recorded.

    Every stage's organic set holds round 0's (an oracle's budget extends it), so the union is at least the
    largest stage's read and at most their sum, capped at the last stage's set (``organic_tokens``). When that
    stage read its whole set, D is exactly the set; otherwise ``complete`` is False and D is given as bounds,
    the point being the lower one."""
    reads = [int(r["organic_unique_tokens"]) for r in rounds if r.get("organic_unique_tokens") is not None]
    budget = rounds[-1].get("organic_tokens") if rounds else None
    if not reads or budget is None:
        return {"tokens": budget, "budget": budget, "complete": None, "low": None, "high": None}
    low, high = max(reads), min(sum(reads), int(budget))
    complete = reads[-1] >= int(budget)
    if complete:
        low = high = int(budget)
    return {"tokens": low, "budget": int(budget), "complete": complete, "low": low, "high": high}


def _effective(final: dict[str, dict], round0: dict | None) -> dict:
    """The oracle ladder through repetition and the oracle runs (D = the unique organic tokens each read), and
    every run's effective tokens and multiplier over repetition and over round 0 (eval/effective_tokens.py)."""
    ladder = {
        run: o["unique_read"]["tokens"]
        for run, o in final.items()
        if (run == "repetition" or run.startswith("oracle_"))
        and o.get("val_loss") is not None
        and o["unique_read"].get("tokens")
    }
    short = [run for run in ladder if final[run]["unique_read"].get("complete") is False]
    if len(set(ladder.values())) < 3 or "repetition" not in ladder:
        return {
            "status": "not_fitted",
            "note": f"{len(ladder)} ladder point(s) (repetition and oracle runs at distinct unique-token "
            "counts); the fit L(D) = E + B / D^beta needs at least 3, and 4 to have a degree of freedom",
        }
    losses = {run: o["val_loss"] for run, o in final.items() if o.get("val_loss") is not None}
    refs = ["repetition"]
    if round0 is not None and round0.get("val_loss") is not None:
        losses["round 0"] = round0["val_loss"]
        refs.append("round 0")
    out = et.ladder_reading(ladder, losses, references=refs)
    out["status"] = out["fit"]["status"]
    if short:
        out["short_oracles"] = {
            run: f"read {final[run]['unique_read']['low']:,} of its {final[run]['unique_read']['budget']:,} "
            "organic tokens in its steps: D is a lower bound"
            for run in short
        }
    return out


def summarize(exp: Experiment, done: dict[str, dict], runs: list[str], preempted: bool) -> dict:
    final, per_run = {}, {}
    for run in runs:
        rounds = []
        for r in range(exp.cfg.rounds + 1):
            pre, ev = (done.get(resolver(run)(f"r{r}/{name}")) for name in ("pretrain", "eval"))
            if pre is None:
                break
            rounds.append(
                {
                    "round": r,
                    "train_step": pre["train_step"],
                    "tokens": pre["tokens"],
                    "organic_tokens": pre.get("organic_tokens"),
                    "organic_rows": pre.get("organic_rows"),
                    "organic_unique_tokens": pre.get("organic_unique_tokens"),
                    "val_loss": pre.get("val_loss"),
                    "plateaued": pre.get("plateaued"),
                    **({"eval": {"tasks": ev["tasks"], "perplexity": ev["perplexity"]}} if ev else {}),
                }
            )
            final[run] = {"val_loss": pre.get("val_loss"), "round": r, "unique_read": unique_read(rounds)}
        per_run[run] = rounds
    complete = all(len(per_run[r]) == exp.cfg.rounds + 1 for r in runs)
    # the "no collapse" check of each synthesize stage done: its records beside the organic documents they rewrote
    diversity = [
        {
            "stage": key,
            "round": o["round"],
            "generator": o["generator"],
            "synthetic": o["diversity"]["synthetic"],
            "organic": o["diversity"]["organic"],
        }
        for key, o in done.items()
        if "diversity" in o
    ]
    return {
        "out_dir": str(exp.root),
        "preempted": preempted,
        "complete": complete,
        "runs": per_run,
        "diversity": diversity,
        "effective_tokens": _effective(final, done.get("r0/pretrain")) if complete else {"status": "incomplete"},
    }
