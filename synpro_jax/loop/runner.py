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
import heapq
import json
import logging
import time
import zlib

from etils.epath import Path
import jax

from synpro_jax import atomic, distributed, sharding
from synpro_jax.data import sources
from synpro_jax.data.config import DataConfig, SyntheticShards
from synpro_jax.data.tasks import organic_task_name
from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.errors import ConfigError
from synpro_jax.eval import diversity as diversity_lib
from synpro_jax.eval import run as eval_run
from synpro_jax.generation import run as generation_run
from synpro_jax.generation.synthesize import MANIFEST, selection_identity
from synpro_jax.influence import run as influence_run
from synpro_jax.loop import report
from synpro_jax.loop.config import LoopConfig, method_names
from synpro_jax.loop.experiment import (
    Experiment,
    StageCall,
    StagePreempted,
    mixing_rates,
    relative,
    scalars,
    stage_name,
    tally_records,
)
from synpro_jax.loop.manifest import Manifest
from synpro_jax.loop.plan import GeneratorSpec, StagePlan, plan_rounds
from synpro_jax.loop.settings import StageSettings
from synpro_jax.models.config import ModelConfig
from synpro_jax.rl import run as rl_run
from synpro_jax.train import params_io
from synpro_jax.train import run as train_run

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


# --- the stages: each calls its job function with the loop's fields set on the stage's template ------------------
def pretrain_stage(exp: Experiment, run: str, plan: StagePlan, budget: int | None, outputs: dict, resolve) -> StageCall:
    rel = exp.stage_dir(run, plan)
    steps = exp.cfg.round_steps(plan.round)
    plateau = plan.round == 0 and exp.cfg.stop_on_plateau
    previous = outputs[resolve(plan.reads[0])] if plan.round else None
    synthetic = []
    for key in plan.synthetic:
        out = outputs[resolve(key)]
        synthetic.append((out["generator"], out["round"], out["dir"]))
    data = exp.data
    if budget is not None:
        data = dataclasses.replace(data, organic_budget_tokens=budget)
    if synthetic:
        data = dataclasses.replace(
            data,
            synthetic=tuple(SyntheticShards(g, r, str(exp.path(d) / "*.jsonl")) for g, r, d in synthetic),
            mixing=mixing_rates(exp, [(g, r) for g, r, _ in synthetic]),
        )
    inputs = {
        "kind": "pretrain",
        "steps": steps,
        "stop_on_plateau": plateau,
        "init_from": None if previous is None else {"dir": previous["dir"], "step": previous["train_step"]},
        "synthetic": [{"generator": g, "round": r, "dir": d} for g, r, d in synthetic],
        "mixing": data.mixing if synthetic else None,
        "organic_budget_tokens": data.organic_budget_tokens,
    }
    data_start = {}
    if previous is not None:
        # The data goes on where the previous stage left it: each stream it read continues from the rows read (by
        # token position and stream identity, see data/mixture.py); a stream new in this round starts at row 0.
        if "data" not in previous:
            raise ConfigError(
                f"{resolve(plan.reads[0])} was recorded without its data position (by an older "
                "synpro_jax): continue this experiment from that round with the synpro_jax that made it, "
                "or start a new experiment directory"
            )
        data_start = {
            name: {"tokens": d["position_tokens"], "stream": d["stream"]} for name, d in previous["data"].items()
        }
        inputs["data_start"] = data_start

    def work() -> dict:
        template = exp.stages.pretrain
        trainer = dataclasses.replace(
            template.trainer,
            out_dir=str(exp.path(rel)),
            num_steps=steps,
            stop_on_plateau=plateau,
            data_start=data_start,
        )
        init_from = None if previous is None else str(exp.path(previous["dir"]))
        job = dataclasses.replace(template, trainer=trainer, data=data, init_from=init_from)
        summary = train_run.pretrain(job, exp.record)
        if summary.get("preempted"):
            raise StagePreempted(f"pretraining {rel} stopped at step {summary['step']}")
        train_step = int(summary.get("start_step", 0)) + int(summary["step"])
        organic = summary["data"].get(organic_task_name(data.corpus), {})
        return {
            "dir": rel,
            "step": int(summary["step"]),
            "train_step": train_step,
            "start_step": int(summary.get("start_step", 0)),
            "tokens_per_step": trainer.global_batch * trainer.seq_len,
            "tokens": train_step * trainer.global_batch * trainer.seq_len,
            "val_loss": summary.get("val_loss"),
            "loss": summary.get("loss"),
            "plateaued": bool(summary.get("plateaued")),
            "organic_tokens": summary.get("organic_tokens"),
            # what this stage read: organic rows and the distinct organic tokens among them, and per stream
            "organic_rows": organic.get("rows"),
            "organic_unique_tokens": organic.get("unique_tokens"),
            "data": summary["data"],
            # the lowest validation loss and its parameters (TrainerConfig.keep_best), for best-checkpoint readings
            "best": None
            if not summary.get("best")
            else {**summary["best"], "dir": relative(exp, summary["best"]["dir"])},
        }

    def ok(o: dict) -> bool:
        return (exp.path(o["dir"]) / "checkpoints" / str(o["step"])).is_dir()

    return StageCall(stage_name(run, plan), inputs, work, ok)


def probe_stage(exp: Experiment, run: str, plan: StagePlan, outputs: dict, resolve) -> StageCall:
    rel = exp.stage_dir(run, plan)
    theta = outputs[resolve(plan.reads[0])]
    inputs = {"kind": "probe", "theta": {"dir": theta["dir"], "step": theta["train_step"]}}

    def work() -> dict:
        job = dataclasses.replace(
            exp.stages.probe,
            model=exp.model,
            checkpoint=str(exp.path(theta["dir"])),
            vocabulary=exp.vocabulary_path(),
            out_dir=str(exp.path(rel)),
        )
        result = influence_run.probe(job, exp.record)
        result = {**scalars(result), "scores": relative(exp, result["scores"])} if "scores" in result else result
        return {"dir": rel, "finetuned": f"{rel}/finetuned", **scalars(result)}

    return StageCall(stage_name(run, plan), inputs, work, lambda o: (exp.path(o["finetuned"]) / "config.json").exists())


def grpo_stage(exp: Experiment, run: str, plan: StagePlan, spec: GeneratorSpec, outputs: dict, resolve) -> StageCall:
    rel = exp.stage_dir(run, plan)
    theta = outputs[resolve(plan.reads[0])]
    tuned = outputs[resolve(plan.reads[1])]
    policy, is_run = exp.policy(spec, plan, outputs, resolve)
    steps = spec.steps_in(plan.round)
    prompts = exp.cfg.grpo_prompts or exp.data.organic
    inputs = {
        "kind": "grpo",
        "generator": spec.name,
        "operation": spec.operation,
        "policy": relative(exp, policy),
        "steps": steps,
        "prompts": list(prompts),
        "theta": {"dir": theta["dir"], "step": theta["train_step"]},
        "finetuned": tuned["finetuned"],
    }

    def work() -> dict:
        template = exp.stages.generators[spec.name].grpo
        run_cfg = dataclasses.replace(
            template.run, out_dir=str(exp.path(rel)), **({} if steps is None else {"num_steps": steps})
        )
        job = dataclasses.replace(
            template,
            generator=policy,
            prompts=prompts,
            run=run_cfg,
            influence_checkpoint=str(exp.path(theta["dir"])),
            influence_finetuned=str(exp.path(tuned["finetuned"])),
            influence_model=exp.model,
            influence_vocabulary=exp.vocabulary_path(),
            **exp.generator_args(policy, is_run),
        )
        summary = rl_run.grpo(job, exp.record)
        if summary.get("preempted"):
            raise StagePreempted(f"GRPO {rel} stopped at step {summary['steps']}")
        return {
            "dir": rel,
            "export": f"{rel}/export",
            "steps": int(summary["steps"]),
            "last_rewards": summary.get("last_rewards", {}),
        }

    return StageCall(stage_name(run, plan), inputs, work, lambda o: (exp.path(o["export"]) / "config.json").exists())


def synthesize_stage(
    exp: Experiment, run: str, plan: StagePlan, spec: GeneratorSpec, outputs: dict, resolve
) -> StageCall:
    rel = exp.stage_dir(run, plan)
    policy, is_run = exp.policy(spec, plan, outputs, resolve)
    inputs = {
        "kind": "synthesize",
        "generator": spec.name,
        "operation": spec.operation,
        "round": plan.round,
        "policy": relative(exp, policy),
        "shards": list(exp.data.organic),
        "documents": selection_identity(exp.training_documents()),
    }

    def stage_diversity(settings, limit: int = 2000) -> dict:
        """The "no collapse" check (eval/diversity.py): the stage's records that have text (what pretraining
        reads: "ok", and "unparsed" under keep_unparsed) beside the organic documents they rewrote. At most
        ``limit`` of them, the same on every process and start: those with the smallest crc32 of the source id,
        in source-id order."""

        total = 0

        def with_text():
            nonlocal total
            for f in sorted(exp.path(rel).glob("*.jsonl")):
                with f.open(encoding="utf-8") as fh:
                    for line in fh:
                        if line.strip() and (r := json.loads(line)).get("text"):
                            total += 1
                            yield r["source_id"], r["text"]

        chosen = dict(
            sorted(heapq.nsmallest(limit, with_text(), key=lambda r: (zlib.crc32(r[0].encode("utf-8")), r[0])))
        )
        organic: dict[str, str] = {}
        for shard in exp.data.organic:
            if len(organic) == len(chosen):
                break
            if sources.is_pretokenized(shard):
                continue
            for doc in sources.open_source(shard, text_field=settings.text_field, id_field=settings.id_field):
                if doc.id in chosen and doc.text and doc.id not in organic:
                    organic[doc.id] = doc.text
                    if len(organic) == len(chosen):
                        break
        return {
            "synthetic": diversity_lib.diversity(list(chosen.values())),
            "organic": diversity_lib.diversity([organic[i] for i in sorted(organic)]),
            "sample": {"records": len(chosen), "of": total},
        }

    def work() -> dict:
        template = exp.stages.generators[spec.name].synthesize
        job = dataclasses.replace(
            template,
            generator=policy,
            shards=exp.data.organic,
            out_dir=str(exp.path(rel)),
            settings=dataclasses.replace(template.settings, round=plan.round),
            documents=exp.training_documents(),
            progress=exp.progress,
            **exp.generator_args(policy, is_run),
        )
        manifest = generation_run.synthesize(job, exp.record)
        return {
            "dir": rel,
            "generator": spec.name,
            "operation": spec.operation,
            "round": plan.round,
            "generator_step": manifest["generator_step"],
            **tally_records(exp.path(rel)),
            "diversity": stage_diversity(template.settings),
        }

    def ok(o: dict) -> bool:
        d = exp.path(o["dir"])
        return (d / MANIFEST).exists() and not list(d.glob("*.partial"))

    return StageCall(stage_name(run, plan), inputs, work, ok)


def evaluate_stage(exp: Experiment, run: str, plan: StagePlan, outputs: dict, resolve) -> StageCall:
    rel = exp.stage_dir(run, plan)
    trained = outputs[resolve(plan.reads[0])]
    settings = exp.cfg.evaluation
    inputs = {
        "kind": "eval",
        "checkpoint": {"dir": trained["dir"], "step": trained["train_step"]},
        "tasks": list(settings.tasks),
        "ppl": list(settings.ppl),
        "limit": settings.limit,
        "ppl_limit": settings.ppl_limit,
        "data_root": settings.data_root,
    }

    def work() -> dict:
        results: dict = {"checkpoint": trained["dir"], "step": trained["train_step"], "tasks": {}, "perplexity": {}}
        if settings.active:
            vocab = exp.vocabulary_path()
            mesh = sharding.single_device_mesh()
            loaded = params_io.load(exp.model, mesh, exp.path(trained["dir"]))
            results = eval_run.evaluate(
                exp.path(trained["dir"]),
                settings,
                vocab=vocab,
                progress=exp.progress,
                model=(exp.model, loaded.params, loaded.step, load_vocabulary(vocab)),
            )
            results["checkpoint"] = trained["dir"]
            del loaded
        results.update({"val_loss": trained.get("val_loss"), "tokens": trained.get("tokens")})
        if jax.process_index() == 0:
            atomic.write_json(exp.path(rel) / "eval.json", results)
        tasks = {
            name: {k: v for k, v in t.items() if k in ("acc", "acc_norm", "items")}
            for name, t in results["tasks"].items()
        }
        ppl = {
            name: {k: v for k, v in p.items() if k in ("ppl", "nll", "bits_per_byte", "tokens")}
            for name, p in results["perplexity"].items()
        }
        return {
            "dir": rel,
            "file": f"{rel}/eval.json",
            "val_loss": trained.get("val_loss"),
            "tokens": trained.get("tokens"),
            "tasks": tasks,
            "perplexity": ppl,
        }

    return StageCall(stage_name(run, plan), inputs, work, lambda o: exp.path(o["file"]).exists())


def run_loop(cfg: LoopConfig, settings: StageSettings, progress: bool = True, record: str | None = None) -> dict:
    """Run (or resume) the experiment from its stage templates; returns the summary also written to
    loop_summary.json. ``record``, the configuration text, is written as ``out_dir/config.gin`` and each stage's."""
    exp = Experiment(cfg, settings, progress=progress, record=record)
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
    board = report.Board(root, runs, writer)
    done: dict[str, dict] = {}
    preempted = False
    t0 = time.perf_counter()
    try:
        for i, (run, method, budget, plan) in enumerate(order, 1):
            resolve = report.resolver(run)
            if plan.kind == "pretrain":
                call = pretrain_stage(exp, run, plan, budget, done, resolve)
            elif plan.kind == "probe":
                call = probe_stage(exp, run, plan, done, resolve)
            elif plan.kind == "grpo":
                call = grpo_stage(exp, run, plan, specs[plan.generator], done, resolve)
            elif plan.kind == "synthesize":
                call = synthesize_stage(exp, run, plan, specs[plan.generator], done, resolve)
            else:
                call = evaluate_stage(exp, run, plan, done, resolve)
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
            except StagePreempted as e:
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
                report.plot(root / "loop_summary.png", report.curves(exp, done, runs))
    finally:
        board.close()
    summary = report.summarize(exp, done, runs, preempted)
    if writer:  # loop_summary.png is redrawn after every pretraining stage, done or skipped
        atomic.write_json(root / "loop_summary.json", summary)
    return summary
