"""``synpro demo --full``: the ablations, arms that take one part of SynPro away after the experiment has run.

Each continues from round 0's checkpoint for the same steps as every other arm, on the loop's own stages
(loop/runner.py), and is scored by the report like the others:

- ``no GRPO``: both generators as the teaching left them (``GeneratorSpec.mode="as_is"``) synthesize the organic
  corpus, and the LM trains on organic text and those two streams in SynPro's mixture: what GRPO adds.
- ``rephrase only`` / ``reformat only``: SynPro's own stream of one generator, with organic text at SynPro's
  organic share and the stream filling the synthetic share: what each operation carries.

- ``second round``: when the plateau detector fired during SynPro's round 1, a second round on that checkpoint
  (probe, GRPO for the reformat generator only, as the release re-trains only reformat in later rounds,
  synthesis with both, pretraining on organic text and both rounds' streams), against SynPro continued for the
  same steps on round 1's mixture: what a new round adds over more of the same data. These two arms have more
  compute than the ladder's, so they are compared with each other, not placed on the ladder.

Their stages go to ``<loop>/<arm>/r<k>/...`` and are recorded in ``<loop>/ablations/loop.json`` (the loop's
manifest: done stages are skipped, a killed one resumes), so a rerun of ``synpro demo --full`` redoes nothing.
"""

from __future__ import annotations

import dataclasses
import time

from etils.epath import Path
import jax

from synpro_jax import distributed
from synpro_jax.loop.config import LoopConfig
from synpro_jax.loop.experiment import Experiment, StagePreempted
from synpro_jax.loop.manifest import Manifest
from synpro_jax.loop.plan import StagePlan, plan_rounds
from synpro_jax.loop.runner import grpo_stage, pretrain_stage, probe_stage, synthesize_stage
from synpro_jax.loop.settings import StageSettings
from synpro_jax.train.metrics import read_records

__all__ = ["ABLATIONS", "run_ablations", "run_second_round", "plateaued"]

# arm name (its directory) -> (label, the generators whose streams it trains on, their source)
ABLATIONS = {
    "no_grpo": ("no GRPO", ("rephrase", "reformat"), "taught"),
    "rephrase_only": ("rephrase only", ("rephrase",), "synpro"),
    "reformat_only": ("reformat only", ("reformat",), "synpro"),
}


def _mixing(loop_cfg: LoopConfig, generators: tuple[str, ...]) -> dict | None:
    """SynPro's mixture for a subset of its generators: organic keeps its rate, the kept streams share the
    synthetic rate in their own proportions."""
    mixing = loop_cfg.mixing
    if not isinstance(mixing, dict):
        return mixing
    synthetic = sum(v for k, v in mixing.items() if k != "organic")
    kept = sum(mixing.get(g, 0) for g in generators)
    if not kept:
        raise ValueError(f"LoopConfig.mixing={mixing}: no rate for {generators}, so no ablation of them")
    return {"organic": mixing.get("organic", 0), **{g: mixing[g] * synthetic / kept for g in generators}}


def _run(manifest: Manifest, calls, done: dict, progress: bool, t0: float) -> bool:
    """Run the stage calls in order through the ablations' manifest; False when one was preempted."""
    writer = jax.process_index() == 0
    for round_, make in calls:
        call = make()
        key = f"r{round_}/{call.name}"
        state = manifest.record(round_, call.name)
        if writer and progress:
            what = "done, skipping" if state and state.status == "done" else "resuming" if state else "starting"
            print(f"[ablations | {time.perf_counter() - t0:,.0f}s] {key}: {what}", flush=True)
        try:
            done[key] = manifest.run(round_, call.name, call.inputs, call.work, call.outputs_ok)
        except StagePreempted:
            return False
        distributed.barrier(f"ablation {key}")
    return True


def plateaued(stage_dir: Path) -> int | None:
    """The first step at which the stage's plateau detector fired (its metrics' ``plateau`` flag), or None."""
    path = stage_dir / "metrics.jsonl"
    if not path.exists():
        return None
    for r in read_records(path):
        if r.get("plateau"):
            return int(r["step"])
    return None


def _round_entry(pre: dict, round_: int) -> dict:
    keys = ("train_step", "tokens", "organic_tokens", "organic_rows", "organic_unique_tokens", "val_loss")
    return {"round": round_, **{k: pre.get(k) for k in keys}}


def run_second_round(
    loop_cfg: LoopConfig, stages: StageSettings, progress: bool = True, record: str | None = None
) -> dict | None:
    """The second-round ablation (module docstring): {"triggered": step or None, "arms": {"second_round",
    "synpro_continued"} -> {"dir", "rounds"}} (no arms when the plateau detector did not fire), or None when
    preempted."""
    root = Path(loop_cfg.out_dir)
    step = plateaued(root / "synpro" / "r1" / "pretrain")
    if step is None:
        return {"triggered": None, "arms": {}}
    loop = Manifest(root, config=None)
    done = {key: rec.outputs for key, rec in loop.stages.items() if rec.status == "done"}
    manifest = Manifest(root / "ablations", {"layout": "synpro_jax demo ablations v1"})
    # The release's later rounds: rephrase keeps its round-1 policy, reformat is GRPO-trained again.
    specs = tuple(
        dataclasses.replace(g, train_rounds=(1,)) if g.operation == "rephrase" else g for g in loop_cfg.generators
    )
    cfg = dataclasses.replace(loop_cfg, rounds=2, steps=(*loop_cfg.steps, loop_cfg.steps[-1]), generators=specs)
    exp = Experiment(cfg, stages, progress=progress, record=record)
    by_name = {g.name: g for g in specs}

    def second(key: str) -> str:
        round_, name = key.split("/", 1)
        return key if round_ == "r0" else f"r1/synpro/{name}" if round_ == "r1" else f"r2/second_round/{name}"

    def continued(key: str) -> str:
        round_, name = key.split("/", 1)
        return key if round_ == "r0" else f"r1/synpro/{name}" if round_ == "r1" else f"r2/synpro_continued/{name}"

    calls = []
    for plan in (p for p in plan_rounds(2, specs, "synpro") if p.round == 2 and p.kind != "eval"):
        if plan.kind == "probe":
            make = lambda plan=plan: probe_stage(exp, "second_round", plan, done, second)  # noqa: E731
        elif plan.kind == "grpo":
            make = lambda plan=plan: grpo_stage(exp, "second_round", plan, by_name[plan.generator], done, second)  # noqa: E731
        elif plan.kind == "synthesize":
            make = lambda plan=plan: synthesize_stage(exp, "second_round", plan, by_name[plan.generator], done, second)  # noqa: E731
        else:
            make = lambda plan=plan: pretrain_stage(exp, "second_round", plan, None, done, second)  # noqa: E731
        calls.append((2, make))
    round1 = tuple(f"r1/synthesize_{g.name}" for g in specs)
    same = StagePlan(2, "pretrain", "pretrain", reads=("r1/pretrain", *round1), synthetic=round1)
    calls.append((2, lambda: pretrain_stage(exp, "synpro_continued", same, None, done, continued)))
    if not _run(manifest, calls, done, progress, time.perf_counter()):
        return None
    rounds = _synpro_rounds(done)
    arms = {}
    for arm in ("second_round", "synpro_continued"):
        pre = done[f"r2/{arm}/pretrain"]
        arms[arm] = {"dir": pre["dir"], "rounds": [*rounds, _round_entry(pre, 2)]}
    return {"triggered": step, "arms": arms}


def _synpro_rounds(done: dict) -> list[dict]:
    """SynPro's rounds 0 and 1 as the loop recorded them."""
    return [_round_entry(done["r0/pretrain"], 0), _round_entry(done["r1/synpro/pretrain"], 1)]


def run_ablations(
    loop_cfg: LoopConfig, stages: StageSettings, summary: dict, progress: bool = True, record: str | None = None
) -> dict | None:
    """Run (or resume) the ablation arms; returns {arm: {"label", "dir", "rounds", "diversity"}} for the report,
    or None when preempted."""
    root = Path(loop_cfg.out_dir)
    loop = Manifest(root, config=None)  # the experiment's own stages, done: their outputs are read
    done = {key: rec.outputs for key, rec in loop.stages.items() if rec.status == "done"}
    manifest = Manifest(root / "ablations", {"layout": "synpro_jax demo ablations v1"})
    specs = {g.name: g for g in loop_cfg.generators}
    out = {}
    t0 = time.perf_counter()
    for arm, (label, generators, source) in ABLATIONS.items():
        exp = Experiment(
            dataclasses.replace(loop_cfg, mixing=_mixing(loop_cfg, generators)),
            stages,
            progress=progress,
            record=record,
        )
        keys = {}
        calls = []
        for g in generators:
            if source == "taught":
                spec = dataclasses.replace(specs[g], mode="as_is", train_rounds=None, grpo_steps=None)
                plan = StagePlan(1, f"synthesize_{g}", "synthesize", g, policy_from="start")
                keys[g] = f"r1/{arm}/synthesize_{g}"
                calls.append(
                    (1, lambda plan=plan, spec=spec: synthesize_stage(exp, arm, plan, spec, done, lambda k: k))
                )
            else:
                keys[g] = f"r1/synpro/synthesize_{g}"
        synthetic = tuple(f"r1/synthesize_{g}" for g in generators)
        plan = StagePlan(1, "pretrain", "pretrain", reads=("r0/pretrain", *synthetic), synthetic=synthetic)

        def resolve(key: str, keys=keys) -> str:
            return keys.get(key.split("synthesize_")[-1], key) if "synthesize_" in key else key

        calls.append((1, lambda plan=plan, resolve=resolve: pretrain_stage(exp, arm, plan, None, done, resolve)))
        if not _run(manifest, calls, done, progress, t0):
            return None
        pre = done[f"r1/{arm}/pretrain"]
        round0 = summary["runs"]["synpro"][0]
        out[arm] = {
            "label": label,
            "dir": pre["dir"],
            "rounds": [round0, _round_entry(pre, 1)],
            "diversity": [
                {
                    "stage": keys[g],
                    "round": 1,
                    "generator": g,
                    "synthetic": done[keys[g]]["diversity"]["synthetic"],
                    "organic": done[keys[g]]["diversity"]["organic"],
                }
                for g in generators
                if source == "taught" and "diversity" in done[keys[g]]
            ],
        }
    return out
