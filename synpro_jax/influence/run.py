"""The probe and the influence service as stages: load theta, fine-tune theta', score a corpus or serve."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from synpro_jax.models import ModelConfig
from synpro_jax.train.params_io import load_params

log = logging.getLogger(__name__)


def reference_rows(paths: Sequence[str], vocab, seq_len: int, max_examples: int | None = None):
    from synpro_jax.influence.reference import ReferenceSource, encode_examples

    src = ReferenceSource(list(paths))
    examples = list(src)
    print(f"reference: {src.report.summary()}")
    if not examples:
        raise ValueError(f"reference {list(paths)}: no usable examples")
    if max_examples:
        order = np.random.default_rng(0).permutation(len(examples))[:max_examples]
        examples = [examples[i] for i in sorted(order)]
    return encode_examples(examples, vocab, seq_len)


def probe_and_score(cfg: ModelConfig, mesh: Mesh, checkpoint: str, vocabulary: str, reference: Sequence[str],
                    corpus: Sequence[str], out_dir: str, probe_cfg, *, text_field: str = "text", max_len: int = 2048,
                    batch_size: int = 32, max_reference_examples: int | None = None, progress: bool = True) -> dict:
    """Fine-tune theta' (saved as an HF directory in out_dir/finetuned, reused if present) and score every
    document of ``corpus`` into out_dir/influence.npz."""
    from synpro_jax.data.corpus import build_corpus
    from synpro_jax.data.sources import open_sources
    from synpro_jax.data.vocab import load_vocabulary
    from synpro_jax.influence.probe import Probe, finetune, score_corpus
    from synpro_jax.models import hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = load_vocabulary(vocabulary)
    params = load_params(cfg, mesh, checkpoint)
    tuned_dir = out / "finetuned"
    if (tuned_dir / "config.json").exists():
        print(f"reusing theta' from {tuned_dir}")
        _, tuned = hf.load(tuned_dir)
    else:
        ref_tokens, ref_mask = reference_rows(reference, vocab, probe_cfg.seq_len, max_reference_examples)
        tuned = finetune(cfg, mesh, params, ref_tokens, ref_mask, probe_cfg, progress=progress)
        hf.save(cfg, jax.device_get(tuned), tuned_dir)
    docs_corpus, report = build_corpus(open_sources(corpus, text_field=text_field, eos_id=vocab.eos_id,
                                                      vocab_size=vocab.vocab_size), vocab,
                                       cache_dir=out / "cache", name="probe_corpus", progress=progress)
    if report is not None:
        print(f"corpus: {report.summary()}")
    probe = Probe(cfg, mesh, params, tuned, max_len=max_len)
    docs = [docs_corpus.doc(i) for i in range(docs_corpus.num_docs)]
    path = score_corpus(probe, docs, docs_corpus.doc_ids, out / "scores", batch_size=batch_size, progress=progress)
    with np.load(path, allow_pickle=True) as z:
        infl = z["influence"]
        summary = {"scores": str(path), "documents": int(len(infl)), "influence_mean": float(infl.mean()),
                   "influence_std": float(infl.std()), "loss_before_mean": float(z["loss_before"].mean()),
                   "loss_after_mean": float(z["loss_after"].mean())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
