"""``synpro demo``: the world's files, the generators' teaching, the SynPro experiment, and the result table.

Every step is resumable: the world is written once (``world/world.json`` last), the teaching job checkpoints and
ends with ``teach/summary.json``, and the experiment is ``synpro loop`` (its manifest, ``loop/loop.json``, skips
finished stages and resumes the one that was running). The report is made from those files alone, so a killed
and rerun demo ends with the same table as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time

from etils.epath import Path
import gin

from synpro_jax.demo.config import DemoConfig

log = logging.getLogger(__name__)

__all__ = ["run_demo"]


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


def _bind(**macros) -> None:
    """Set gin macros after the config files were parsed (the paths and budgets the demo decides)."""
    with gin.unlock_config():
        gin.parse_config([f"{name} = {value!r}" for name, value in macros.items()])  # Python literals are gin's


def _bind_params(params: dict) -> None:
    with gin.unlock_config():
        for key, value in params.items():
            gin.bind_parameter(key, value)


def organic_budgets(documents: int, multiples, progress: bool = True) -> tuple[int, dict[int, int]]:
    """(round 0's unique-token budget: exactly the first ``documents`` (the organic biographies), {multiple: the
    oracle budget of ``multiple`` times as many documents}), counted in the tokenized corpus the runs will read,
    in corpus order."""
    import numpy as np

    from synpro_jax.data.streams import organic_split
    from synpro_jax.loop.stages import gin_make

    data = gin_make("synpro.DataConfig", organic_budget_tokens=None)
    _, train, _, _ = organic_split(data, progress=progress)
    cum = np.cumsum(train.lengths())
    if documents * max(multiples) > len(cum):
        raise ValueError(
            f"the corpus holds {len(cum)} training documents; the oracle runs need "
            f"{documents * max(multiples)} ({max(multiples)} x the {documents} organic ones)"
        )
    return int(cum[documents - 1]), {m: int(cum[m * documents - 1]) for m in multiples}


def run_demo(cfg: DemoConfig, model, progress: bool = True) -> dict:
    import dataclasses

    import jax

    from synpro_jax import configs, sharding
    from synpro_jax.demo import report as report_lib
    from synpro_jax.demo.files import write_corpus, write_world
    from synpro_jax.demo.teach import teach_generator
    from synpro_jax.loop.stages import ROUND0_START

    root = Path(cfg.out_dir)
    if not jax.config.jax_compilation_cache_dir:
        # Every arm compiles the same programs, and a resumed demo those of the killed one: keep them on disk.
        jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    writer = jax.process_index() == 0
    steps = _Steps(4, writer and progress)

    if cfg.corpus:
        t = steps.start(f"your corpus: {', '.join(cfg.corpus)}")
        files = write_corpus(
            root / "corpus", cfg.corpus, cfg.reference, share=1 / max(cfg.oracle_multiples), vocab_size=cfg.vocab_size
        )
        organic_docs = sum(1 for line in files.organic.read_text(encoding="utf-8").splitlines() if line.strip())
        steps.done(
            f"{files.root}: {organic_docs} organic documents, the rest for the oracle runs, held-out "
            "documents, tokenizer",
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
        steps.done(f"{files.root}: corpus, held-out biographies, QA, reference task, tokenizer", t)
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
                model,
                root / "teach",
                dataclasses.replace(cfg.teach, seed=cfg.seed),
                mesh,
                progress=progress,
            )
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
    _bind(
        LOOP_DIR=str(root / "loop"),
        ORGANIC=[str(files.corpus)],
        VOCABULARY=str(files.tokenizer),
        REFERENCE=[str(files.reference)] if world else list(files.reference_files),
        PROBE_CORPUS=[str(files.organic)],
        WORLD_JSON=str(files.world_json) if world else None,
        GENERATORS=[{"name": op, "operation": op, "start": start} for op in ("rephrase", "reformat")],
    )
    _bind_params(
        {
            "synpro.DataConfig.validation": [str(files.heldout)],
            "synpro.DataConfig.cache_dir": str(root / "cache"),
            "synpro.LoopConfig.grpo_prompts": [str(files.organic)],
            "synpro.LoopConfig.eval_tasks": [f"qa={files.qa}"] if world else [],
            **(
                {}
                if world and cfg.generator is None
                else {"synpro.SynthesisConfig.keep_unparsed": start == ROUND0_START}
            ),
        }
    )
    organic, oracle = organic_budgets(organic_docs, cfg.oracle_multiples, progress=progress)
    _bind(ORACLE_BUDGETS=[oracle[m] for m in cfg.oracle_multiples])
    _bind_params({"synpro.DataConfig.organic_budget_tokens": organic})
    summary = configs.loop()
    steps.done("experiment " + ("preempted" if summary.get("preempted") else "done"), t)
    if summary.get("preempted") or not summary.get("complete"):
        return {"preempted": True, "out_dir": str(root)}

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
    )
    if writer:
        report_lib.write(report, root)
        print(report_lib.table(report), flush=True)
    steps.done(f"wrote {root / 'demo.json'} and {root / 'demo.png'}", t)
    return report
