"""`synpro eval`: perplexity and zero-shot multiple choice of one checkpoint, as a table and a JSON file.

    synpro eval --checkpoint runs/cpu_organic --preset cpu_small --vocab runs/vocab/sp8k.model \\
        --tasks arc_easy,sciq,piqa,hellaswag --data_root ../shared/data/eval \\
        --ppl ../shared/data/organic/openwebtext_900.jsonl --limit 200

The checkpoint is an HF OLMo-2 directory (its config.json and tokenizer are the defaults) or a synpro run (name its
``--preset`` and ``--vocab``). Tasks are known names under ``--data_root``, ``NAME=PATH`` pairs, or ``.jsonl``
files in the generic format (:mod:`synpro_jax.eval.tasks`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from etils.epath import Path
import jax

from synpro_jax import atomic, sharding
from synpro_jax.data.sources import open_source
from synpro_jax.errors import ConfigError
from synpro_jax.eval import harness, tasks
from synpro_jax.train.model_source import Knobs
from synpro_jax.train.model_source import open_source as open_model
from synpro_jax.train.params_io import load_params_and_step

log = logging.getLogger(__name__)

__all__ = ["EvalConfig", "load_model", "evaluate", "format_table", "write_json"]

KNOBS = Knobs("--checkpoint", "--preset", "--vocab")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What an evaluation scores, the one definition for ``synpro eval``'s flags and the loop's evaluation stages
    (gin: ``synpro.EvalConfig``, as ``synpro.LoopConfig.evaluation``). ``tasks``: known names under ``data_root``,
    ``NAME=PATH`` pairs or generic ``.jsonl`` files; ``ppl``: files of held-out documents for perplexity;
    ``limit`` and ``ppl_limit`` cap the items and documents read; ``rows`` the scorer's batch."""

    tasks: tuple[str, ...] = ()
    ppl: tuple[str, ...] = ()
    data_root: str | None = None
    limit: int | None = None
    ppl_limit: int | None = None
    text_field: str = "text"
    rows: int = 32
    max_len: int | None = None

    def __post_init__(self):
        for knob in ("tasks", "ppl"):
            value = getattr(self, knob)
            object.__setattr__(self, knob, (value,) if isinstance(value, str) else tuple(value or ()))
        for knob in ("limit", "ppl_limit", "max_len"):
            value = getattr(self, knob)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"EvalConfig.{knob}={value!r}: a positive integer or None")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise ConfigError(f"EvalConfig.rows={self.rows!r}: must be >= 1")

    @property
    def active(self) -> bool:
        """Whether there is anything to score."""
        return bool(self.tasks or self.ppl)


def load_model(
    checkpoint: str | Path, *, preset: str | None = None, vocab: str | None = None, dtype: str | None = None, mesh=None
):
    """(config, params placed on ``mesh``, step, vocabulary, vocabulary path) of an HF directory or a synpro run,
    opened by the one rule of train/model_source.py (``--preset`` names the model; for an HF directory its
    shapes must agree with config.json)."""
    source = open_model(checkpoint, preset, vocabulary=vocab, dtype=dtype, knobs=KNOBS)
    mesh = mesh or sharding.single_device_mesh()
    params, step = load_params_and_step(source.config, mesh, checkpoint)
    return source.config, params, step, source.vocab, source.vocabulary


def _eos(vocab) -> int:
    eos = getattr(vocab, "eos_id", None)
    if eos is None:
        raise ValueError("the vocabulary has no EOS id (needed for empty contexts and document boundaries)")
    return int(eos)


def _read_texts(spec: str, text_field: str, limit: int | None) -> list[str]:
    texts = []
    for doc in open_source(spec, text_field=text_field):
        if doc.text:
            texts.append(doc.text)
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise ConfigError(f"--ppl {spec}: no documents with text")
    return texts


def evaluate(
    checkpoint: str | Path,
    settings: EvalConfig,
    *,
    preset: str | None = None,
    vocab: str | None = None,
    dtype: str | None = None,
    all_devices: bool = False,
    progress: bool = True,
    model=None,
) -> dict:
    """Score a checkpoint on ``settings``' tasks and perplexity files; returns the results dict (see
    :func:`write_json`). ``model`` = (config, params, step, vocabulary) skips loading (the loop passes what it
    has in memory)."""
    if not settings.active:
        raise ConfigError("synpro eval: name at least one --tasks entry or --ppl file")
    # fail on a bad spec before loading
    resolved = [tasks.resolve_task(spec, settings.data_root) for spec in settings.tasks]
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1)) if all_devices else sharding.single_device_mesh()
    if model is None:
        cfg, params, step, vocab_obj, vocab = load_model(checkpoint, preset=preset, vocab=vocab, dtype=dtype, mesh=mesh)
    else:
        cfg, params, step, vocab_obj = model
        vocab = vocab or "(given)"
    eos = _eos(vocab_obj)
    scorer = harness.LoglikelihoodScorer(cfg, params, mesh, rows=settings.rows, max_len=settings.max_len)
    results = {
        "checkpoint": str(checkpoint),
        "step": int(step),
        "model": cfg.name,
        "vocabulary": str(vocab),
        "max_len": scorer.max_len,
        "tasks": {},
        "perplexity": {},
    }
    for name, fmt, path in resolved:
        items = tasks.read_task(fmt, path, settings.limit)
        start = time.perf_counter()
        scores = harness.score_multiple_choice(scorer, items, vocab_obj, eos, progress=progress, desc=name)
        results["tasks"][name] = {
            **scores,
            "file": str(path),
            "format": fmt,
            "seconds": round(time.perf_counter() - start, 3),
        }
    for spec in settings.ppl:
        start = time.perf_counter()
        texts = _read_texts(spec, settings.text_field, settings.ppl_limit)
        out = harness.perplexity(scorer, texts, vocab_obj, eos, progress=progress)
        key = Path(spec).name if Path(spec).name not in results["perplexity"] else spec
        results["perplexity"][key] = {**out, "file": spec, "seconds": round(time.perf_counter() - start, 3)}
    return results


def format_table(results: dict) -> str:
    lines = [
        f"{results['checkpoint']} (step {results['step']}, {results['model']})",
        f"{'task':<24}{'items':>8}{'acc':>9}{'acc_norm':>10}",
    ]
    for name, r in results["tasks"].items():
        lines.append(f"{name:<24}{r['items']:>8}{r['acc']:>9.4f}{r['acc_norm']:>10.4f}")
    if results["perplexity"]:
        lines.append(f"{'perplexity':<24}{'tokens':>8}{'ppl':>9}{'bits/byte':>10}")
        for name, r in results["perplexity"].items():
            lines.append(f"{name:<24}{r['tokens']:>8}{r['ppl']:>9.3f}{r['bits_per_byte']:>10.4f}")
    return "\n".join(lines)


def write_json(results: dict, out: str | Path) -> Path:
    """Write atomically (temp file, then rename); only process 0 writes."""
    out = Path(out)
    if jax.process_index() == 0:
        atomic.write_json(out, results)
    return out
