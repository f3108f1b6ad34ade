"""`synpro eval`: perplexity and zero-shot multiple choice of one checkpoint, as a table and a JSON file.

    synpro eval --checkpoint runs/cpu_organic --preset cpu_small --vocab runs/vocab/sp8k.model \\
        --tasks arc_easy,sciq,piqa,hellaswag --data_root ../shared/data/eval \\
        --ppl ../shared/data/organic/openwebtext_900.jsonl --limit 200

The checkpoint is an HF OLMo-2 directory (its config.json and tokenizer are the defaults) or a synpro run (name its
``--preset`` and ``--vocab``). Tasks are known names under ``--data_root``, ``NAME=PATH`` pairs, or ``.jsonl``
files in the generic format (:mod:`synpro_jax.eval.tasks`).
"""

from __future__ import annotations

from collections.abc import Sequence
import logging
import time

from etils.epath import Path

from synpro_jax.eval import harness, tasks

log = logging.getLogger(__name__)

__all__ = ["load_model", "evaluate", "format_table", "write_json"]


def load_model(
    checkpoint: str | Path, *, preset: str | None = None, vocab: str | None = None, dtype: str | None = None, mesh=None
):
    """(config, params placed on ``mesh``, step, vocabulary, vocabulary path) of an HF directory or a synpro run."""
    from synpro_jax import models, sharding
    from synpro_jax.data.vocab import find_vocabulary, load_vocabulary
    from synpro_jax.models import hf
    from synpro_jax.train import params_io

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    mesh = mesh or sharding.single_device_mesh()
    if preset is not None:
        cfg = models.get_preset(preset)
    elif params_io.is_hf_dir(path):
        cfg = hf.read_config(path)
    else:
        raise ValueError(
            f"--checkpoint {path}: not an HF directory (no config.json), so name the run's model with --preset"
        )
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    params, step = params_io.load_params_and_step(cfg, mesh, path)
    if vocab is None:
        found = find_vocabulary(path)
        if found is None:
            raise ValueError(f"--checkpoint {path} has no tokenizer.json or tokenizer.model: pass --vocab")
        vocab = str(found)
    vocab_obj = load_vocabulary(vocab)
    if vocab_obj.vocab_size > cfg.vocab_size:
        raise ValueError(f"--vocab {vocab}: {vocab_obj.vocab_size} tokens but the model has {cfg.vocab_size}")
    return cfg, params, step, vocab_obj, vocab


def _eos(vocab) -> int:
    eos = getattr(vocab, "eos_id", None)
    if eos is None:
        raise ValueError("the vocabulary has no EOS id (needed for empty contexts and document boundaries)")
    return int(eos)


def _read_texts(spec: str, text_field: str, limit: int | None) -> list[str]:
    from synpro_jax.data.sources import open_source

    texts = []
    for doc in open_source(spec, text_field=text_field):
        if doc.text:
            texts.append(doc.text)
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise ValueError(f"--ppl {spec}: no documents with text")
    return texts


def evaluate(
    checkpoint: str | Path,
    task_specs: Sequence[str] = (),
    *,
    ppl: Sequence[str] = (),
    preset: str | None = None,
    vocab: str | None = None,
    dtype: str | None = None,
    data_root: str | Path | None = None,
    limit: int | None = None,
    ppl_limit: int | None = None,
    text_field: str = "text",
    rows: int = 32,
    max_len: int | None = None,
    all_devices: bool = False,
    progress: bool = True,
    model=None,
) -> dict:
    """Score a checkpoint on the tasks and perplexity files; returns the results dict (see :func:`write_json`).

    ``model`` = (config, params, step, vocabulary) skips loading (the loop passes what it has in memory).
    """
    from synpro_jax import sharding

    if not task_specs and not ppl:
        raise ValueError("synpro eval: name at least one --tasks entry or --ppl file")
    resolved = [tasks.resolve_task(spec, data_root) for spec in task_specs]  # fail on a bad spec before loading
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1)) if all_devices else sharding.single_device_mesh()
    if model is None:
        cfg, params, step, vocab_obj, vocab = load_model(checkpoint, preset=preset, vocab=vocab, dtype=dtype, mesh=mesh)
    else:
        cfg, params, step, vocab_obj = model
        vocab = vocab or "(given)"
    eos = _eos(vocab_obj)
    scorer = harness.LoglikelihoodScorer(cfg, params, mesh, rows=rows, max_len=max_len)
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
        items = tasks.read_task(fmt, path, limit)
        start = time.perf_counter()
        scores = harness.score_multiple_choice(scorer, items, vocab_obj, eos, progress=progress, desc=name)
        results["tasks"][name] = {
            **scores,
            "file": str(path),
            "format": fmt,
            "seconds": round(time.perf_counter() - start, 3),
        }
    for spec in ppl:
        start = time.perf_counter()
        texts = _read_texts(spec, text_field, ppl_limit)
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
    import jax

    from synpro_jax import atomic

    out = Path(out)
    if jax.process_index() == 0:
        atomic.write_json(out, results)
    return out
