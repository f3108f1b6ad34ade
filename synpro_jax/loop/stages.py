"""How the loop runs each kind of stage in-process, by calling the stage's job function.

The loop sets only what it owns: each stage's directory, the checkpoints it reads (theta, theta', the policy),
its step count (``LoopConfig.steps``, ``GeneratorSpec.grpo_steps``), the operation and round, and the pretraining
mixture. Everything else (optimizer, batch, probe and GRPO settings, rewards, sampling) comes from the stage
templates in :class:`~synpro_jax.loop.settings.StageSettings`, built before the loop starts.

Each stage is described by a :class:`StageCall`: the inputs recorded in ``loop.json`` (paths relative to the
experiment directory, so the directory can move), the work, and the check that its outputs still exist.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import json
import logging
from typing import Any

from etils.epath import Path
import jax

from synpro_jax import atomic, sharding
from synpro_jax.data.config import SyntheticShards
from synpro_jax.data.streams import organic_split
from synpro_jax.data.tasks import organic_task_name
from synpro_jax.data.vocab import PassthroughVocabulary, TrainedSentencePiece, load_vocabulary
from synpro_jax.errors import ConfigError
from synpro_jax.eval import run as eval_run
from synpro_jax.generation import run as generation_run
from synpro_jax.generation.synthesize import MANIFEST, selection_identity
from synpro_jax.influence import run as influence_run
from synpro_jax.loop.config import LoopConfig
from synpro_jax.loop.plan import GeneratorSpec, StagePlan
from synpro_jax.loop.settings import StageSettings
from synpro_jax.rl import run as rl_run
from synpro_jax.train import params_io
from synpro_jax.train import run as train_run

log = logging.getLogger(__name__)

__all__ = ["StagePreempted", "StageCall", "Experiment", "ROUND0_START"]

ROUND0_START = "r0/pretrain"  # GeneratorSpec.start naming round 0's LM instead of an HF directory


class StagePreempted(RuntimeError):
    """A stage stopped on SIGTERM after saving its progress: the loop stops, and a rerun resumes the stage."""


@dataclasses.dataclass
class StageCall:
    name: str  # the stage's name in loop.json within its round ("pretrain", "synpro/grpo_reformat", ...)
    inputs: dict
    work: Callable[[], dict]
    outputs_ok: Callable[[dict], bool]


def stage_name(run: str, plan: StagePlan) -> str:
    """A stage's name in loop.json within its round: round 0's are shared ("pretrain"), later ones belong to a
    run ("synpro/grpo_reformat")."""
    return plan.name if plan.round == 0 else f"{run}/{plan.name}"


class Experiment:
    """One experiment directory and the templates its stages are made from. ``record``, the configuration text,
    is written as each stage's config.gin."""

    def __init__(self, cfg: LoopConfig, stages: StageSettings, progress: bool = True, record: str | None = None):
        stages.check()
        self.cfg, self.stages, self.progress, self.record = cfg, stages, progress, record
        self.model, self.data = stages.pretrain.model, stages.pretrain.data
        self.root = Path(cfg.out_dir)
        self._documents: list[str] | None = None

    # --- paths ---------------------------------------------------------------------------------------------------
    def stage_dir(self, run: str, plan: StagePlan) -> str:
        """A stage's directory relative to the experiment: r0/<stage> (shared by every run) or <run>/r<k>/<stage>."""
        return f"r0/{plan.name}" if plan.round == 0 else f"{run}/r{plan.round}/{plan.name}"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def vocabulary_path(self) -> str:
        """The pretraining vocabulary as a file (probe, influence reward and evaluation tokenize with it)."""
        spec = self.data.vocabulary
        if isinstance(spec, TrainedSentencePiece):
            return str(Path(self.data.cache_dir) / f"{self.data.corpus}_sp{spec.size}.model")
        if isinstance(spec, PassthroughVocabulary):
            raise ConfigError(
                "synpro.DataConfig.vocabulary is a PassthroughVocabulary (token ids, no text): the "
                "probe, generators and evaluation need a text vocabulary"
            )
        return str(spec)

    def training_documents(self) -> list[str]:
        """Ids of the organic documents round 0 trains on (validation documents held out, budget applied): the
        documents the generators rewrite, written to r0/training_documents.txt for reference."""
        if self._documents is None:
            _, train, _, _ = organic_split(self.data, progress=False)
            self._documents = list(train.doc_ids)
            path = self.root / "r0" / "training_documents.txt"
            text = "".join(f"{d}\n" for d in self._documents)
            if jax.process_index() == 0 and (not path.exists() or path.read_text(encoding="utf-8") != text):
                atomic.write_text(path, text)
        return self._documents

    def check_generators(self) -> None:
        """The generators' starting points and stage templates, and the text vocabulary they and the probe need."""
        self.vocabulary_path()
        for spec in self.cfg.generators:
            if spec.name not in self.stages.generators:
                raise ConfigError(f"GeneratorSpec({spec.name}): the loop's StageSettings has no templates for it")
            if spec.start != ROUND0_START and not (Path(spec.start) / "config.json").exists():
                raise ConfigError(
                    f"GeneratorSpec({spec.name}).start={spec.start}: not an HF OLMo-2 directory (no "
                    f"config.json); give one, or {ROUND0_START!r} to start from round 0's LM"
                )

    # --- the policy a generator stage starts from ---------------------------------------------------------------
    def policy(self, spec: GeneratorSpec, plan: StagePlan, outputs: dict[str, dict], resolve) -> tuple[str, bool]:
        """(the policy's directory as recorded, whether it is a synpro run rather than an HF directory)."""
        if plan.policy_from == "start":
            if spec.start == ROUND0_START:
                return str(self.path(outputs[ROUND0_START]["dir"])), True
            return spec.start, False
        return str(self.path(outputs[resolve(plan.policy_from)]["export"])), False

    def generator_args(self, policy: str, is_run: bool) -> dict:
        """model/vocabulary of a generator: read from an HF directory, or the LM's own for a synpro run."""
        if is_run:
            return {"model": self.model, "vocabulary": self.vocabulary_path()}
        return {"model": None, "vocabulary": None}


def _rel(exp: Experiment, path: str | Path) -> str:
    """A path inside the experiment as recorded (relative to it); others as given."""
    try:
        return str(Path(path).relative_to(exp.root))
    except ValueError:
        return str(path)


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _mixing(exp: Experiment, synthetic: list[tuple[str, int]]) -> Any:
    """DataConfig.mixing for a SynPro round: LoopConfig.mixing with generator names spread over their rounds."""
    mixing = exp.cfg.mixing
    if mixing is None or mixing == "tokens":
        return exp.data.mixing if mixing is None else "tokens"
    names = {f"{g}_r{r}" for g, r in synthetic}
    known = {"organic", *names, *(g for g, _ in synthetic)}
    unknown = sorted(set(mixing) - known)
    if unknown:
        raise ConfigError(
            f"LoopConfig.mixing names {unknown}; this round's mixture has organic and {sorted(names)} "
            "(a generator's name splits its rate over its rounds)"
        )
    rates = {"organic": mixing["organic"]} if "organic" in mixing else {}
    for g, r in synthetic:
        short = f"{g}_r{r}"
        if short in mixing:
            rates[short] = mixing[short]
        elif g in mixing:
            rates[short] = mixing[g] / sum(1 for h, _ in synthetic if h == g)
    return rates


# --- the stages --------------------------------------------------------------------------------------------------
def pretrain(exp: Experiment, run: str, plan: StagePlan, budget: int | None, outputs: dict, resolve) -> StageCall:
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
            mixing=_mixing(exp, [(g, r) for g, r, _ in synthetic]),
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
        }

    def ok(o: dict) -> bool:
        return (exp.path(o["dir"]) / "checkpoints" / str(o["step"])).is_dir()

    return StageCall(stage_name(run, plan), inputs, work, ok)


def probe(exp: Experiment, run: str, plan: StagePlan, outputs: dict, resolve) -> StageCall:
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
        result = {**_scalars(result), "scores": _rel(exp, result["scores"])} if "scores" in result else result
        return {"dir": rel, "finetuned": f"{rel}/finetuned", **_scalars(result)}

    return StageCall(stage_name(run, plan), inputs, work, lambda o: (exp.path(o["finetuned"]) / "config.json").exists())


def grpo(exp: Experiment, run: str, plan: StagePlan, spec: GeneratorSpec, outputs: dict, resolve) -> StageCall:
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
        "policy": _rel(exp, policy),
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


def synthesize(exp: Experiment, run: str, plan: StagePlan, spec: GeneratorSpec, outputs: dict, resolve) -> StageCall:
    rel = exp.stage_dir(run, plan)
    policy, is_run = exp.policy(spec, plan, outputs, resolve)
    inputs = {
        "kind": "synthesize",
        "generator": spec.name,
        "operation": spec.operation,
        "round": plan.round,
        "policy": _rel(exp, policy),
        "shards": list(exp.data.organic),
        "documents": selection_identity(exp.training_documents()),
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
        }

    def ok(o: dict) -> bool:
        d = exp.path(o["dir"])
        return (d / MANIFEST).exists() and not list(d.glob("*.partial"))

    return StageCall(stage_name(run, plan), inputs, work, ok)


def tally_records(directory: Path) -> dict:
    """Counts over the finished shards' records (what was made, however many starts it took)."""
    records, tokens, statuses = 0, 0, {}
    for f in sorted(directory.glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    records += 1
                    tokens += int(r.get("completion_tokens", 0))
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"records": records, "completion_tokens": tokens, "statuses": dict(sorted(statuses.items()))}


def evaluate(exp: Experiment, run: str, plan: StagePlan, outputs: dict, resolve) -> StageCall:
    rel = exp.stage_dir(run, plan)
    trained = outputs[resolve(plan.reads[0])]
    cfg = exp.cfg
    inputs = {
        "kind": "eval",
        "checkpoint": {"dir": trained["dir"], "step": trained["train_step"]},
        "tasks": list(cfg.eval_tasks),
        "ppl": list(cfg.eval_ppl),
        "limit": cfg.eval_limit,
        "ppl_limit": cfg.eval_ppl_limit,
        "data_root": cfg.eval_data_root,
    }

    def work() -> dict:
        results: dict = {"checkpoint": trained["dir"], "step": trained["train_step"], "tasks": {}, "perplexity": {}}
        if cfg.eval_tasks or cfg.eval_ppl:
            vocab = exp.vocabulary_path()
            mesh = sharding.single_device_mesh()
            loaded = params_io.load(exp.model, mesh, exp.path(trained["dir"]))
            results = eval_run.evaluate(
                exp.path(trained["dir"]),
                cfg.eval_tasks,
                ppl=cfg.eval_ppl,
                vocab=vocab,
                data_root=cfg.eval_data_root,
                limit=cfg.eval_limit,
                ppl_limit=cfg.eval_ppl_limit,
                rows=cfg.eval_rows,
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
