"""``synpro loop``: a SynPro experiment, its rounds and its baselines, run stage by stage through ``loop.json``.

Round 0 (pretraining on organic data to the plateau, then evaluation) is shared by every run of the experiment.
Then, round by round, each run does its stages (loop/plan.py): ``synpro`` probes, GRPO-trains and runs its
generators and continues pretraining on the growing mixture; ``repetition`` continues on the organic data alone;
each ``oracle_<D>`` continues on D unique organic tokens. Every later round runs ``LoopConfig.steps[r]`` steps in
every run, so the runs compare at equal compute. A round's pretraining continues the previous round's data too:
each stream goes on from the rows the previous round read (a stream new in the round, or an oracle's larger
organic set, starts at row 0), and ``loop.json`` records per stage the rows each stream read, the organic rows and
the distinct organic tokens among them (``organic_rows``, ``organic_unique_tokens``).

Layout of the experiment directory::

    loop.json                   the manifest (loop/manifest.py): each stage's inputs, outputs, status
    r0/pretrain, r0/eval        round 0
    <run>/r<k>/<stage>          e.g. synpro/r1/grpo_reformat, repetition/r2/pretrain
    tensorboard/<run>/          one TensorBoard run per run, every stage on one global step
    loop_summary.json, .png     validation loss over tokens (rounds marked), evaluations, effective tokens

A killed loop is rerun with the same command: done stages are skipped, the interrupted one resumes from its own
checkpoints or shard files, and nothing already produced is made twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

from etils.epath import Path
import jax

from synpro_jax import atomic, distributed
from synpro_jax.data.config import DataConfig
from synpro_jax.eval import effective_tokens as et
from synpro_jax.loop import stages
from synpro_jax.loop.config import LoopConfig, method_names
from synpro_jax.loop.manifest import Manifest
from synpro_jax.loop.plan import StagePlan, plan_rounds
from synpro_jax.loop.settings import StageSettings
from synpro_jax.models.config import ModelConfig
from synpro_jax.train.metrics import TensorBoard, save_png

log = logging.getLogger(__name__)

__all__ = ["LoopJob", "run_loop", "stage_order"]


@dataclasses.dataclass(frozen=True)
class LoopJob:
    """What ``synpro loop`` runs (gin: ``synpro.loop``): the experiment (``config``), the pretraining LM (also
    theta for the probe and the influence reward) and the round-0 data the later rounds extend. The stages'
    other settings are the templates of loop/settings.py, built from their usual bindings."""

    config: LoopConfig
    model: ModelConfig
    data: DataConfig
    progress: bool = True


def stage_order(cfg: LoopConfig) -> list[tuple[str, str, int | None, StagePlan]]:
    """(run, method, oracle budget, stage) in the order they run: round 0 once, then each round for every run."""
    runs = method_names(cfg)
    plans = {
        name: plan_rounds(cfg.rounds, cfg.generators if method == "synpro" else (), method) for name, method, _ in runs
    }
    order = [(runs[0][0], runs[0][1], None, p) for p in plans[runs[0][0]] if p.round == 0]
    for r in range(1, cfg.rounds + 1):
        for name, method, budget in runs:
            order += [(name, method, budget, p) for p in plans[name] if p.round == r]
    return order


def _resolver(run: str):
    """Plan keys ("r1/grpo_reformat") to manifest keys ("r1/synpro/grpo_reformat"); round 0 is shared."""

    def resolve(key: str) -> str:
        round_, name = key.split("/", 1)
        return key if round_ == "r0" else f"{round_}/{run}/{name}"

    return resolve


class _Board:
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

    def stage(self, runs: list[str], exp: stages.Experiment, plan: StagePlan, outputs: dict) -> None:
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


def _curves(exp: stages.Experiment, done: dict[str, dict], runs: list[str]) -> dict[str, dict]:
    """Per run: validation loss over pretraining tokens, and the token count at the end of each round."""
    out = {}
    for run in runs:
        points, bounds = [], []
        for r in range(exp.cfg.rounds + 1):
            o = done.get(_resolver(run)(f"r{r}/pretrain"))
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


def _plot(path: Path, curves: dict[str, dict]) -> None:
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


def _summary(exp: stages.Experiment, done: dict[str, dict], runs: list[str], preempted: bool) -> dict:
    final, per_run = {}, {}
    for run in runs:
        rounds = []
        for r in range(exp.cfg.rounds + 1):
            pre, ev = (done.get(_resolver(run)(f"r{r}/{name}")) for name in ("pretrain", "eval"))
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


def run_loop(cfg: LoopConfig, settings: StageSettings, progress: bool = True, record: str | None = None) -> dict:
    """Run (or resume) the experiment from its stage templates; returns the summary also written to
    loop_summary.json. ``record``, the configuration text, is written as ``out_dir/config.gin`` and each stage's."""
    exp = stages.Experiment(cfg, settings, progress=progress, record=record)
    if "synpro" in cfg.methods and cfg.rounds:
        exp.check_generators()  # before any work: a wrong path fails now, not after round 0
    root = Path(cfg.out_dir)
    writer = jax.process_index() == 0
    if writer:
        root.mkdir(parents=True, exist_ok=True)
    distributed.write_config_record(root, record)
    manifest = Manifest(root, {"layout": "synpro_jax loop v1"})
    order = stage_order(cfg)
    runs = [name for name, _, _ in method_names(cfg)]
    specs = {g.name: g for g in cfg.generators}
    board = _Board(root, runs, writer)
    done: dict[str, dict] = {}
    preempted = False
    t0 = time.perf_counter()
    try:
        for i, (run, method, budget, plan) in enumerate(order, 1):
            resolve = _resolver(run)
            if plan.kind == "pretrain":
                call = stages.pretrain(exp, run, plan, budget, done, resolve)
            elif plan.kind == "probe":
                call = stages.probe(exp, run, plan, done, resolve)
            elif plan.kind == "grpo":
                call = stages.grpo(exp, run, plan, specs[plan.generator], done, resolve)
            elif plan.kind == "synthesize":
                call = stages.synthesize(exp, run, plan, specs[plan.generator], done, resolve)
            else:
                call = stages.evaluate(exp, run, plan, done, resolve)
            key = f"r{plan.round}/{call.name}"
            record = manifest.record(plan.round, call.name)
            state = (
                "done, skipping"
                if record is not None and record.status == "done"
                else "resuming"
                if record is not None
                else "starting"
            )
            if writer:
                print(f"[loop {i}/{len(order)} | {time.perf_counter() - t0:,.0f}s] {key}: {state}", flush=True)
            start = time.perf_counter()
            try:
                outputs = manifest.run(plan.round, call.name, call.inputs, call.work, call.outputs_ok)
            except stages.StagePreempted as e:
                log.warning("loop: %s; rerun the same command to resume", e)
                preempted = True
                break
            done[key] = outputs
            # The next stage reads what this one wrote (process 0 alone writes exports, summaries, manifests).
            distributed.barrier(f"loop {key}")
            if writer:
                notes = ", ".join(
                    f"{k} {outputs[k]:.4g}" if isinstance(outputs[k], float) else f"{k} {outputs[k]}"
                    for k in ("train_step", "val_loss", "steps", "records")
                    if outputs.get(k) is not None
                )
                print(
                    f"[loop {i}/{len(order)}] {key}: done in {time.perf_counter() - start:,.1f}s"
                    f"{' | ' + notes if notes else ''}",
                    flush=True,
                )
            board.stage([run] if plan.round else runs, exp, plan, outputs)
            if writer and plan.kind == "pretrain":
                _plot(root / "loop_summary.png", _curves(exp, done, runs))
    finally:
        board.close()
    summary = _summary(exp, done, runs, preempted)
    if writer:  # loop_summary.png is redrawn after every pretraining stage, done or skipped
        atomic.write_json(root / "loop_summary.json", summary)
    return summary
