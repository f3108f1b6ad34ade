"""What a SynPro loop reports as it goes and at the end: one TensorBoard run per run of the experiment (every stage
on one global step), validation loss over pretraining tokens with the rounds marked (``loop_summary.png``), and
the summary (``loop_summary.json``): each run's rounds, its evaluations and the effective-token fit."""

from __future__ import annotations

import json
import math

from etils.epath import Path

from synpro_jax.eval import effective_tokens as et
from synpro_jax.loop.config import LoopConfig
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


def _effective(cfg: LoopConfig, final: dict[str, dict]) -> dict:
    """The oracle fit over repetition and the oracle runs (D = their unique organic tokens), and every run's
    effective tokens and multiplier over repetition."""
    oracle = {
        run: o
        for run, o in final.items()
        if (run == "repetition" or run.startswith("oracle_"))
        and o.get("val_loss") is not None
        and o.get("organic_tokens")
    }
    if len({o["organic_tokens"] for o in oracle.values()}) < 3:
        return {
            "status": "not_fitted",
            "note": f"{len(oracle)} oracle point(s) (repetition and oracle runs at "
            "distinct unique-token budgets); the fit L(D) = E + B / D^beta needs at least 3",
        }
    fit = et.fit_oracle([o["organic_tokens"] for o in oracle.values()], [o["val_loss"] for o in oracle.values()])
    out = {"status": "fitted", "fit": fit.to_json(), "runs": {}}
    rep = final.get("repetition", {}).get("val_loss")
    for run, o in final.items():
        if o.get("val_loss") is None:
            continue
        entry = {"effective_tokens": et.effective_tokens(fit, o["val_loss"]).to_json()}
        if rep is not None:
            entry["multiplier_over_repetition"] = et.multiplier(fit, o["val_loss"], rep).to_json()
        out["runs"][run] = entry
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
                    "organic_rows": pre.get("organic_rows"),
                    "organic_unique_tokens": pre.get("organic_unique_tokens"),
                    "val_loss": pre.get("val_loss"),
                    "plateaued": pre.get("plateaued"),
                    **({"eval": {"tasks": ev["tasks"], "perplexity": ev["perplexity"]}} if ev else {}),
                }
            )
            final[run] = {"val_loss": pre.get("val_loss"), "organic_tokens": pre.get("organic_tokens"), "round": r}
        per_run[run] = rounds
    complete = all(len(per_run[r]) == exp.cfg.rounds + 1 for r in runs)
    return {
        "out_dir": str(exp.root),
        "preempted": preempted,
        "complete": complete,
        "runs": per_run,
        "effective_tokens": _effective(exp.cfg, final) if complete else {"status": "incomplete"},
    }
