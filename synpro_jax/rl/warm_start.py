"""A supervised warm start for a generator that cannot yet write the answer format.

The release starts GRPO from an instruct model that already follows the prompt: it writes the heading, an answer
and stops. A base LM (the CPU path's ``cpu_organic`` run) never writes the heading, so every completion scores the
same, every group has zero spread and GRPO has nothing to learn from (``GRPORunConfig.stall_*``). The warm start
teaches the format first, as ``demo/teach.py`` teaches the demo's generators: supervised steps on rows
``[the operation's chat prompt for a document | answer + EOS]``, loss on the answer only, where the answer is

- rephrase: the heading, a newline, the document's first sentences (the identity rewrite);
- reformat: the heading, then one ``- Topic: <its first words> Content: <the sentence>`` entry per sentence.

So it teaches the layout and when to stop, not the operation's skill: GRPO's rewards are what improve the
rewrite. The documents should not be the GRPO prompts (``cpu_grpo_rephrase.gin`` uses dclm_annotated_web for the
warm start and openwebtext_900 for GRPO). Batches are a function of the step, so the job resumes exactly
(``train/supervised.py``); when done it samples completions of a few GRPO prompts as GRPO samples them and
records how many carry exactly one heading. The result is a synpro run in ``out_dir`` (its checkpoints), which
GRPO starts from and uses as its KL reference.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import logging
import re

from etils.epath import Path
import jax
from jax.sharding import Mesh
import numpy as np

from synpro_jax import atomic, distributed
from synpro_jax.checks import positive_ints
from synpro_jax.generation import prompts as P
from synpro_jax.generation.sampler import Sampler
from synpro_jax.models import ModelConfig
from synpro_jax.resume_guard import check
from synpro_jax.rl.prompt_set import PromptSet
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.step import next_token_batch
from synpro_jax.train.supervised import train_supervised

log = logging.getLogger(__name__)

__all__ = ["WarmStartConfig", "warm_start_rows", "warm_start_batch", "run_warm_start"]

SUMMARY = "warm_start.json"


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    """gin: ``synpro.WarmStartConfig``; set ``synpro.grpo.warm_start = @synpro.WarmStartConfig()`` to run it
    before GRPO (in ``GRPORunConfig.out_dir/warm_start``)."""

    documents: Sequence[str] = ()  # organic files for the rows (not the GRPO prompts)
    steps: int = 96
    batch: int = 8  # rows per step
    learning_rate: float = 1e-3  # constant, AdamW b2 0.95, no weight decay, clip 1.0
    max_documents: int = 400
    min_source_chars: int = 500
    # The answer: the document's first sentences, cut before this many characters and tokens (then EOS). Short
    # answers keep the heading a large share of the loss, so it is learned in few steps.
    answer_chars: int = 240
    answer_tokens: int = 64
    eval_prompts: int = 4  # GRPO prompts whose completions are checked for the heading when it ends
    checkpoint_every: int = 32
    seed: int = 0

    def __post_init__(self):
        positive_ints(
            self, "steps", "batch", "max_documents", "answer_chars", "answer_tokens", "eval_prompts", "checkpoint_every"
        )
        if isinstance(self.documents, str) or not self.documents:
            raise ValueError(
                f"WarmStartConfig.documents={self.documents!r}: a list of organic files (not the "
                "GRPO prompts) whose documents become the warm start's rows"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"WarmStartConfig.learning_rate={self.learning_rate}: must be > 0")
        if self.min_source_chars < 0 or self.seed < 0:
            raise ValueError("WarmStartConfig.min_source_chars and .seed must be >= 0")


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def answer_text(source: str, operation: str, max_chars: int) -> str:
    """The warm start's answer for ``source``: the heading and the document's first sentences, laid out as the
    operation's answer."""
    text = P.cut_at_sentence(source.strip(), max_chars)
    if operation == "rephrase":
        return f"{P.HEADINGS[operation]}\n{text}"
    entries = []
    for sentence in (s.strip() for s in _SENTENCE.split(" ".join(text.split()))):
        if sentence:
            entries.append(P.Entry(" ".join(sentence.split()[:4]).rstrip(".,;:!?"), sentence).render())
    return P.HEADINGS[operation] + "\n" + "\n".join(entries)


def warm_start_rows(
    cfg: WarmStartConfig, vocab, operation: str, max_prompt_tokens: int, max_source_chars: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids ending in EOS) per warm-start document, the prompt built as GRPO builds it."""

    ps = PromptSet(
        list(cfg.documents),
        vocab,
        operation,
        max_prompt_tokens=max_prompt_tokens,
        max_source_chars=max_source_chars,
        min_source_chars=cfg.min_source_chars,
        max_documents=cfg.max_documents,
        what="WarmStartConfig.documents",
    )
    rows = []
    for item in ps.items:
        ids = list(vocab.encode(answer_text(item.source, operation, cfg.answer_chars)))[: cfg.answer_tokens]
        rows.append((list(item.ids), ids + [int(vocab.eos_id)]))
    return rows


def warm_start_batch(
    rows: Sequence[tuple[list[int], list[int]]], idx: Sequence[int], length: int, pad_id: int = 0
) -> dict:
    """A next-token batch of ``[prompt | answer]`` rows padded to ``length`` tokens (so ``length - 1`` positions),
    the loss on the answer's tokens (its EOS included) only; padding is segment 0."""

    tokens = np.full((len(idx), length), pad_id, np.int32)
    mask = np.zeros((len(idx), length), np.float32)
    seg = np.zeros((len(idx), length), np.int32)
    for r, i in enumerate(idx):
        prompt, answer = rows[i]
        row = list(prompt) + list(answer)
        if len(row) > length:
            raise ValueError(f"warm-start row {i} has {len(row)} tokens > {length}")
        tokens[r, : len(row)] = row
        mask[r, len(prompt) : len(row)] = 1.0  # targets that are answer tokens (next_token_batch shifts the mask)
        seg[r, : len(row)] = 1
    batch = next_token_batch(tokens, mask)
    batch["segment_ids"] = seg[:, :-1]
    batch["positions"] = np.broadcast_to(np.arange(length - 1, dtype=np.int32), batch["inputs"].shape).copy()
    return batch


def heading_rate(
    sampler,
    vocab,
    prompt_ids: Sequence[Sequence[int]],
    operation: str,
    *,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float | None,
    seed: int,
    stop_ids: Sequence[int],
) -> dict:
    """Completions sampled as GRPO samples them: the share with exactly one heading, the share that stopped, and
    their mean length in tokens."""
    out = sampler.rollout(
        [list(p) for p in prompt_ids],
        num_generations=num_generations,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        eos_id=list(stop_ids),
        pad_id=int(getattr(vocab, "pad_id", 0) or 0),
    )
    comps = out.completions()
    stops = set(int(s) for s in stop_ids)
    texts = [vocab.decode([t for t in c if t not in stops]) for c in comps]
    return {
        "format_rate": float(np.mean([P.parse_answer(t, operation).headings == 1 for t in texts])),
        "stopped": float(np.mean([bool(c) and c[-1] in stops for c in comps])),
        "completion_tokens": float(np.mean([len(c) for c in comps])),
    }


def run_warm_start(
    cfg: WarmStartConfig,
    model_cfg: ModelConfig,
    mesh: Mesh,
    params,
    vocab,
    out_dir: str | Path,
    *,
    operation: str,
    max_prompt_tokens: int,
    max_source_chars: int,
    eval_prompts: Sequence[list[int]],
    sampling: dict,
    inputs: dict,
    progress: bool = True,
) -> dict:
    """Run (or resume, or reuse) the warm start from ``params``; returns its summary (``out_dir/warm_start.json``)
    once ``out_dir`` holds the finished run. ``inputs`` is what else decides it (the starting generator, the
    vocabulary); a finished or partial run made with other inputs is refused. ``sampling``: GRPO's
    ``num_generations``, ``max_new_tokens``, ``temperature``, ``top_p`` and ``stop_ids`` for the final check."""

    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY
    inputs = json.loads(
        json.dumps(
            {
                "warm_start": dataclasses.asdict(cfg),
                "operation": operation,
                "max_prompt_tokens": max_prompt_tokens,
                "max_source_chars": max_source_chars,
                "model": model_cfg.settings(),
                **inputs,
            },
            default=str,
        )
    )
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        check(
            summary.get("inputs"),
            inputs,
            f"the warm start in {out_dir} (synpro.WarmStartConfig and the generator)",
            "use another GRPORunConfig.out_dir",
        )
        return summary
    rows = warm_start_rows(cfg, vocab, operation, max_prompt_tokens, max_source_chars)
    if len(rows) < cfg.batch:
        raise ValueError(f"WarmStartConfig.documents: {len(rows)} usable documents for batch={cfg.batch}")
    length = max(len(p) + len(a) for p, a in rows) + 1
    if length - 1 > model_cfg.max_seq_len:
        raise ValueError(
            f"warm-start rows need {length - 1} positions > the generator's max_seq_len="
            f"{model_cfg.max_seq_len}: lower WarmStartConfig.answer_tokens or max_prompt_tokens"
        )
    pad_id = int(getattr(vocab, "pad_id", 0) or 0)

    def batch(step: int) -> dict:
        idx = np.random.default_rng([cfg.seed, step]).choice(len(rows), cfg.batch, replace=False)
        return warm_start_batch(rows, idx, length, pad_id)

    optimizer = OptimizerConfig(
        learning_rate=cfg.learning_rate,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.0,
        b1=0.9,
        b2=0.95,
        clip_norm=1.0,
    )
    trained = train_supervised(
        model_cfg,
        mesh,
        optimizer,
        batch,
        cfg.steps,
        out_dir,
        inputs,
        params=params,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        log_every=8,
        metric="warm_start/answer_loss",
        desc="warm start",
        progress=progress,
    )
    if trained.preempted:  # SIGTERM: the checkpoint is saved; a rerun goes on from it
        return {"preempted": True, "steps": trained.step}
    state, records, seconds = trained.state, trained.records, trained.seconds
    sampler = Sampler(model_cfg, state.params, mesh=mesh)
    after = heading_rate(sampler, vocab, list(eval_prompts)[: cfg.eval_prompts], operation, seed=cfg.seed, **sampling)
    del sampler
    summary = {
        "inputs": inputs,
        "rows": len(rows),
        "row_tokens": length - 1,
        "steps": cfg.steps,
        "seconds": round(seconds, 1),
        "final_answer_loss": records[-1]["warm_start/answer_loss"] if records else None,
        "after": after,
    }
    if jax.process_index() == 0:
        atomic.write_json(summary_path, summary)
    distributed.barrier(f"warm start {out_dir}")
    log.info(
        "warm start done: %d steps; completions with one heading %.2f, stopped %.2f",
        cfg.steps,
        after["format_rate"],
        after["stopped"],
    )
    return summary
