"""The demo generators' prior skill, as a resumable job: supervised rewriting on the world's teaching population
(sft.py), then an HF directory that GRPO starts from (the release starts from an instruct model).

One model learns both operations; the rephrase and reformat generators both start from it. The job checkpoints
every ``checkpoint_every`` steps (orbax, atomic), logs the answer loss to ``metrics.jsonl`` and TensorBoard, and
resumes from its last checkpoint: the teaching batches are a function of the step, so a resumed job sees exactly
the batches an uninterrupted one would. When done it scores rewrites of organic biographies it never saw (exact
fact checks, the "before GRPO" samples) and writes ``hf/`` (config, safetensors and the world's tokenizer) in one
rename.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

from etils.epath import Path
import jax

from synpro_jax import atomic
from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.demo import sft
from synpro_jax.demo import world as W
from synpro_jax.generation import prompts
from synpro_jax.generation.sampler import Sampler
from synpro_jax.models import hf
from synpro_jax.resume_guard import check
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.supervised import train_supervised

log = logging.getLogger(__name__)

__all__ = ["TeachConfig", "teach_generator"]


@dataclasses.dataclass(frozen=True)
class TeachConfig:
    steps: int = 800
    batch: int = 16  # rows, each packed with whole examples
    length: int = 192  # tokens per row: fits the longest example (a prompt of ~48 and a reformat of ~140)
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    # Constant after warmup: copying the facts is learned in a sudden transition whose step varies by seed
    # (about 350 to 700+); a decaying rate can starve a late one (bench/demo_generator.py --schedule).
    schedule: str = "constant"
    checkpoint_every: int = 100
    eval_people: int = 24  # organic people whose rewrites are scored when the job ends
    seed: int = 0

    def __post_init__(self):
        for knob in ("steps", "batch", "length", "checkpoint_every", "eval_people"):
            if getattr(self, knob) < 1:
                raise ValueError(f"TeachConfig.{knob}={getattr(self, knob)}: must be >= 1")


def _fingerprint(cfg: TeachConfig, model_cfg, world_spec: dict) -> dict:
    return {"teach": dataclasses.asdict(cfg), "model": model_cfg.settings(), "world": world_spec}


def teach_generator(
    world: W.World,
    world_spec: dict,
    vocab_path: Path,
    model_cfg,
    out_dir: Path,
    cfg: TeachConfig,
    mesh,
    progress: bool = True,
) -> dict:
    """Teach (or resume teaching) the generator; returns the job's summary (``out_dir/summary.json``) with the
    HF directory in ``"hf"``. A finished job is not redone; one recorded with other settings is refused."""

    out_dir = Path(out_dir)
    summary_path, hf_dir = out_dir / "summary.json", out_dir / "hf"
    inputs = _fingerprint(cfg, model_cfg, world_spec)
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        check(summary["inputs"], inputs, f"the generator taught in {out_dir}", "use another --out")
        return summary
    vocab = load_vocabulary(str(vocab_path))
    stream = sft.TeachingStream(world.teachers, vocab, seed=cfg.seed)
    optimizer = OptimizerConfig(
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        schedule=cfg.schedule,
        total_steps=cfg.steps,
        weight_decay=0.0,
        clip_norm=1.0,
    )
    taught = train_supervised(
        model_cfg,
        mesh,
        optimizer,
        lambda step: stream.batch(step, cfg.batch, cfg.length),
        cfg.steps,
        out_dir,
        inputs,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        metric="teach/answer_loss",
        desc="teach generator",
        progress=progress,
    )
    if taught.preempted:  # SIGTERM: the checkpoint is saved; a rerun goes on from it
        return {"preempted": True, "steps": taught.step}
    state, records, seconds = taught.state, taught.records, taught.seconds

    # Before GRPO: rewrites of organic biographies the generator never saw, scored exactly.
    sampler = Sampler(model_cfg, state.params, mesh=mesh)
    people = world.people[: cfg.eval_people]
    scores, samples = {}, {}
    for op in prompts.OPERATIONS:
        texts: list[tuple[W.Person, str]] = []
        scores[op] = sft.evaluate_rewrites(
            sampler,
            vocab,
            people,
            op,
            max_new_tokens=cfg.length - 48,
            seed=cfg.seed,
            on_text=lambda p, t: texts.append((p, t)),
        )
        person, text = texts[0]
        samples[op] = {
            "source": W.organic_biography(person),
            "rewrite": text,
            "fact_score": W.fact_check(person, prompts.parse_answer(text, op).text).score,
        }
    if jax.process_index() == 0:
        _export(model_cfg, state.params, vocab_path, hf_dir)
        summary = {
            "inputs": inputs,
            "hf": str(hf_dir),
            "steps": cfg.steps,
            "seconds": round(seconds, 1),
            "final_loss": records[-1]["teach/answer_loss"] if records else None,
            "rewrites": scores,
            "samples": samples,
        }
        atomic.write_json(summary_path, summary)
    else:
        summary = {"hf": str(hf_dir)}
    return summary


def _export(model_cfg, params, vocab_path: Path, hf_dir: Path) -> None:
    """hf/ with the world's tokenizer beside the weights, appearing in one rename."""

    tmp = hf_dir.with_name(hf_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save(model_cfg, params, tmp)
    shutil.copyfile(vocab_path, tmp / "tokenizer.json")
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    tmp.rename(hf_dir)
