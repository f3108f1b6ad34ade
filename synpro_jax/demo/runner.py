"""``synpro demo``: the world's files, the generators' teaching, the SynPro experiment, and the result table.

Every step is resumable: the world is written once (``world/world.json`` last), the teaching job checkpoints and
ends with ``teach/summary.json``, and the experiment is ``synpro loop`` (its manifest, ``loop/loop.json``, skips
finished stages and resumes the one that was running). The report is made from those files alone, so a killed
and rerun demo ends with the same table as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import logging
import time
from typing import Any

from etils.epath import Path
import jax
import numpy as np

from synpro_jax import sharding
from synpro_jax.data.config import DataConfig
from synpro_jax.data.streams import organic_split
from synpro_jax.demo import report as report_lib
from synpro_jax.demo.ablations import run_ablations, run_second_round
from synpro_jax.demo.config import DemoConfig
from synpro_jax.demo.files import write_corpus, write_world
from synpro_jax.demo.teach import teach_generator
from synpro_jax.eval.run import EvalConfig
from synpro_jax.loop.config import LoopConfig
from synpro_jax.loop.experiment import ROUND0_START
from synpro_jax.loop.plan import GeneratorSpec
from synpro_jax.loop.runner import run_loop
from synpro_jax.loop.settings import StageSettings
from synpro_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

__all__ = ["DemoJob", "DemoExperiment", "run_demo", "organic_budgets"]

OPERATIONS = ("rephrase", "reformat")  # the demo's two generators, named after their operations


@dataclasses.dataclass(frozen=True)
class DemoJob:
    """What ``synpro demo`` runs (gin: ``synpro.demo``): the world and the teaching (``config``), the LM's model
    and the generators' (the teaching's; None: the LM's)."""

    config: DemoConfig
    model: ModelConfig
    progress: bool = True
    generator_model: ModelConfig | None = None


@dataclasses.dataclass(frozen=True)
class DemoExperiment:
    """The experiment's settings before the demo knows its files and token budgets: ``loop`` and ``data`` are the
    knobs of a LoopConfig and a DataConfig (the demo adds the paths and budgets, then builds them), ``stages``
    the stage templates with one generator per operation (the demo adds the world's file to the rewards'
    options)."""

    loop: Mapping[str, Any]
    data: Mapping[str, Any]
    stages: StageSettings


class _Steps:
    """``[demo k/4 | 12s elapsed]`` lines around each part of the demo."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0, self.k = total, enabled, time.perf_counter(), 0

    def start(self, what: str) -> float:
        self.k += 1
        if self.enabled:
            print(f"[demo {self.k}/{self.total} | {time.perf_counter() - self.t0:,.0f}s elapsed] {what}", flush=True)
        return time.perf_counter()

    def done(self, what: str, since: float) -> None:
        if self.enabled:
            print(f"[demo {self.k}/{self.total}] {what} ({time.perf_counter() - since:,.1f}s)", flush=True)


def organic_budgets(data: DataConfig, documents: int, multiples, progress: bool = True) -> tuple[int, dict[float, int]]:
    """(round 0's unique-token budget: exactly the first ``documents`` (the organic biographies), {multiple: the
    oracle budget of round(``multiple`` x ``documents``) documents}), counted in the tokenized corpus the runs
    will read, in corpus order."""
    data = dataclasses.replace(data, organic_budget_tokens=None)
    _, train, _, _ = organic_split(data, progress=progress)
    cum = np.cumsum(train.lengths())
    counts = {m: int(round(m * documents)) for m in multiples}
    if max(counts.values()) > len(cum):
        raise ValueError(
            f"the corpus holds {len(cum)} training documents; the oracle runs need "
            f"{max(counts.values())} ({max(multiples):g} x the {documents} organic ones)"
        )
    return int(cum[documents - 1]), {m: int(cum[k - 1]) for m, k in counts.items()}


def _with_world(stages: StageSettings, world_json: str | None) -> StageSettings:
    """The generators' rewards with the world's file as the faithfulness judge's key, where they name one."""
    generators = {}
    for name, gen in stages.generators.items():
        options = {k: dict(v) for k, v in gen.grpo.rewards.options.items()}
        if "faithfulness" in options and "world" in options["faithfulness"]:
            options["faithfulness"]["world"] = world_json
        rewards = dataclasses.replace(gen.grpo.rewards, options=options)
        generators[name] = dataclasses.replace(gen, grpo=dataclasses.replace(gen.grpo, rewards=rewards))
    return dataclasses.replace(stages, generators=generators)


def run_demo(job: DemoJob, experiment: DemoExperiment, record: str | None = None) -> dict:
    """Run (or resume) the demo; returns the report written as ``demo.json``. ``record``, the configuration
    text, is written as the experiment's config.gin."""
    cfg, model, progress = job.config, job.model, job.progress
    root = Path(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if not jax.config.jax_compilation_cache_dir:
        # Every arm compiles the same programs, and a resumed demo those of the killed one: keep them on disk.
        jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    writer = jax.process_index() == 0
    steps = _Steps(5 if cfg.ablations else 4, writer and progress)

    if cfg.corpus:
        t = steps.start(f"your corpus: {', '.join(cfg.corpus)}")
        files = write_corpus(
            root / "corpus", cfg.corpus, cfg.reference, share=1 / max(cfg.oracle_multiples), vocab_size=cfg.vocab_size
        )
        organic_docs = sum(1 for line in files.organic.read_text(encoding="utf-8").splitlines() if line.strip())
        steps.done(
            f"{files.root}: {organic_docs} organic documents, the rest for the oracle runs, validation and "
            "test documents, tokenizer",
            t,
        )
        t = steps.start("the generators")
        taught = {}
        start = cfg.generator or ROUND0_START
        steps.done(
            f"both start from {start}"
            + (
                ""
                if cfg.generator
                else ": round 0's LM cannot rephrase, so its raw completions are kept; give --generator HF_DIR"
            ),
            t,
        )
    else:
        t = steps.start(f"the world: {cfg.people} people, {cfg.teachers} teachers, seed {cfg.seed}")
        files = write_world(
            root / "world",
            people=cfg.people,
            teachers=cfg.teachers,
            reference_fraction=cfg.reference_fraction,
            seed=cfg.seed,
            oracle_copies=cfg.oracle_copies,
            vocab_size=cfg.vocab_size,
        )
        organic_docs = cfg.people
        steps.done(f"{files.root}: corpus, validation and test biographies, QA, reference task, tokenizer", t)
        if cfg.generator:
            t = steps.start("the generators")
            taught, start = {}, cfg.generator
            steps.done(f"both start from {start}", t)
        else:
            t = steps.start(f"teaching the generators ({cfg.teach.steps} supervised steps on the teaching population)")
            mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
            taught = teach_generator(
                files.world(),
                files.spec,
                files.tokenizer,
                job.generator_model or model,
                root / "teach",
                dataclasses.replace(cfg.teach, seed=cfg.seed),
                mesh,
                progress=progress,
            )
            if taught.get("preempted"):
                return {"preempted": True, "out_dir": str(root)}
            start = taught["hf"]
            steps.done(
                "taught: "
                + ", ".join(
                    f"{op} fact score {s['fact_score']:.2f}, format {s['format']:.2f}"
                    for op, s in taught.get("rewrites", {}).items()
                ),
                t,
            )

    t = steps.start("the SynPro experiment (synpro loop)")
    world = not cfg.corpus
    data = DataConfig(
        **{
            **experiment.data,
            "organic": [str(files.corpus)],
            "vocabulary": str(files.tokenizer),
            "validation": [str(files.validation)],
            "cache_dir": str(root / "cache"),
        }
    )
    organic, oracle = organic_budgets(data, organic_docs, cfg.oracle_multiples, progress=progress)
    data = dataclasses.replace(data, organic_budget_tokens=organic)
    loop_cfg = LoopConfig(
        **{
            **experiment.loop,
            "out_dir": str(root / "loop"),
            "generators": tuple(GeneratorSpec(op, op, start) for op in OPERATIONS),
            "oracle_budget_tokens": [oracle[m] for m in cfg.oracle_multiples],
            "grpo_prompts": [str(files.organic)],
            "evaluation": dataclasses.replace(
                experiment.loop.get("evaluation", EvalConfig()), tasks=[f"qa={files.qa}"] if world else []
            ),
        }
    )
    stages = _with_world(experiment.stages, str(files.world_json) if world else None)
    probe = dataclasses.replace(
        stages.probe,
        vocabulary=str(files.tokenizer),
        reference=[str(files.reference)] if world else list(files.reference_files),
        corpus=[str(files.organic)],
    )
    if not (world and cfg.generator is None):  # round 0's LM cannot rephrase: keep its raw completions
        generators = {
            name: dataclasses.replace(
                gen,
                synthesize=dataclasses.replace(
                    gen.synthesize,
                    settings=dataclasses.replace(gen.synthesize.settings, keep_unparsed=start == ROUND0_START),
                ),
            )
            for name, gen in stages.generators.items()
        }
        stages = dataclasses.replace(stages, generators=generators)
    stages = dataclasses.replace(stages, pretrain=dataclasses.replace(stages.pretrain, data=data), probe=probe)
    summary = run_loop(loop_cfg, stages, progress=progress, record=record)
    steps.done("experiment " + ("preempted" if summary.get("preempted") else "done"), t)
    if summary.get("preempted") or not summary.get("complete"):
        return {"preempted": True, "out_dir": str(root)}

    extra = second = None
    if cfg.ablations:
        t = steps.start("the ablations: no GRPO, rephrase only, reformat only, a second round")
        extra = run_ablations(loop_cfg, stages, summary, progress=progress, record=record)
        second = None if extra is None else run_second_round(loop_cfg, stages, progress=progress, record=record)
        if extra is None or second is None:
            return {"preempted": True, "out_dir": str(root)}
        steps.done(
            "ablations done" + ("" if second["triggered"] else "; no second round: SynPro's round 1 did not plateau"),
            t,
        )

    t = steps.start("the result table")
    report = report_lib.build(
        cfg,
        files,
        taught,
        root / "loop",
        summary,
        organic,
        {f"oracle_{oracle[m]}": m for m in cfg.oracle_multiples},
        model,
        extra,
        second,
    )
    if writer:
        report_lib.write(report, root)
        print(report_lib.table(report), flush=True)
    steps.done(f"wrote {root / 'demo.json'} and {root / 'demo.png'}", t)
    return report
