"""``synpro demo --full``: the ablations, arms that take one part of SynPro away after the experiment has run.

Each continues from round 0's checkpoint for the same steps as every other arm, on the loop's own stages
(loop/runner.py), and is scored by the report like the others:

- ``no GRPO``: both generators as the teaching left them (``GeneratorSpec.mode="as_is"``) synthesize the organic
  corpus, and the LM trains on organic text and those two streams in SynPro's mixture: what GRPO adds.
- ``rephrase only`` / ``reformat only``: SynPro's own stream of one generator, with organic text at SynPro's
  organic share and the stream filling the synthetic share: what each operation carries.

Their stages go to ``<loop>/<arm>/r1/...`` and are recorded in ``<loop>/ablations/loop.json`` (the loop's
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
from synpro_jax.loop.plan import StagePlan
from synpro_jax.loop.runner import pretrain_stage, synthesize_stage
from synpro_jax.loop.settings import StageSettings

__all__ = ["ABLATIONS", "run_ablations"]

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


def run_ablations(
    loop_cfg: LoopConfig, stages: StageSettings, summary: dict, progress: bool = True, record: str | None = None
) -> dict | None:
    """Run (or resume) the ablation arms; returns {arm: {"label", "dir", "rounds", "diversity"}} for the report,
    or None when preempted."""
    root = Path(loop_cfg.out_dir)
    loop = Manifest(root, config=None)  # the experiment's own stages, done: their outputs are read
    done = {key: rec.outputs for key, rec in loop.stages.items() if rec.status == "done"}
    manifest = Manifest(root / "ablations", {"layout": "synpro_jax demo ablations v1"})
    writer = jax.process_index() == 0
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
                    (plan, lambda plan=plan, spec=spec: synthesize_stage(exp, arm, plan, spec, done, lambda k: k))
                )
            else:
                keys[g] = f"r1/synpro/synthesize_{g}"
        synthetic = tuple(f"r1/synthesize_{g}" for g in generators)
        plan = StagePlan(1, "pretrain", "pretrain", reads=("r0/pretrain", *synthetic), synthetic=synthetic)

        def resolve(key: str, keys=keys) -> str:
            return keys.get(key.split("synthesize_")[-1], key) if "synthesize_" in key else key

        calls.append((plan, lambda plan=plan, resolve=resolve: pretrain_stage(exp, arm, plan, None, done, resolve)))
        for plan, make in calls:
            call = make()
            key = f"r1/{call.name}"
            state = manifest.record(1, call.name)
            if writer and progress:
                what = "done, skipping" if state and state.status == "done" else "resuming" if state else "starting"
                print(f"[ablations | {time.perf_counter() - t0:,.0f}s] {key}: {what}", flush=True)
            try:
                done[key] = manifest.run(1, call.name, call.inputs, call.work, call.outputs_ok)
            except StagePreempted:
                return None
            distributed.barrier(f"ablation {key}")
        pre = done[f"r1/{arm}/pretrain"]
        round0 = summary["runs"]["synpro"][0]
        out[arm] = {
            "label": label,
            "dir": pre["dir"],
            "rounds": [
                round0,
                {
                    "round": 1,
                    "train_step": pre["train_step"],
                    "tokens": pre["tokens"],
                    "organic_tokens": pre.get("organic_tokens"),
                    "organic_rows": pre.get("organic_rows"),
                    "organic_unique_tokens": pre.get("organic_unique_tokens"),
                    "val_loss": pre.get("val_loss"),
                },
            ],
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
