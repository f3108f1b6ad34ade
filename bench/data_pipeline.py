"""Input pipeline throughput against the trainer's consumption, on the same batches.

Builds the CPU experiment's data (organic text from ../shared/data/organic, or the built-in Markov corpus when
that folder is absent), then measures in one process:
  - tokenization: documents/s and tokens/s of the first (uncached) pass;
  - the seqio path, the trainer's real input: the registered Mixture's ``get_dataset`` read as sharded global
    batches (packing, mixing, loss masks, tf.data, device transfer), and the direct random-access path beside it;
  - the same two paths on a six-stream mixture (organic and five synthetic rounds), with each stream's count of
    epoch orders built (one per epoch touched when every stream keeps its own cache);
  - the trainer: tokens/s of cpu_small train steps on those batches.
Goal: the seqio path at >= 1M tokens/s on a 2-core host (a v5e-8 host training olmo_400m at 35% MFU consumes
about 230k tokens/s).

    python bench/data_pipeline.py [--seq 256 --batch 16 --preset cpu_small]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.data.config import DataConfig  # noqa: E402
from synpro_jax.data.pipeline import TrainBatches  # noqa: E402
from synpro_jax.data.streams import build_streams, open_organic  # noqa: E402
from synpro_jax.data.vocab import PassthroughVocabulary, TrainedSentencePiece, resolve_vocabulary  # noqa: E402
from synpro_jax.train import OptimizerConfig, TrainStep  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "organic"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_pipeline.json"
SYNTHETIC_ROUNDS = [("rephrase", 1), ("reformat", 1), ("rephrase", 2), ("reformat", 2), ("rephrase", 3)]


def rate(batches: TrainBatches, steps: int, first: int = 1) -> float:
    """Tokens/s of producing global batches ``first .. first + steps`` (after one warm-up batch)."""
    batches(first - 1)
    t = time.perf_counter()
    for s in range(first, first + steps):
        batch, _ = batches(s)
    jax.block_until_ready(batch)
    return steps * batches.global_batch * batches.seq_len / (time.perf_counter() - t)


def synthetic_shards(data: DataConfig, root: Path) -> list[tuple[str, int, str]]:
    """Five rounds of stand-in generator output (JSONL shards, one record per source document), each a
    different rewrite of the organic documents, so the six streams differ in size and content."""
    docs = [d for d in open_organic(data) if d.text]
    out = []
    for k, (op, rnd) in enumerate(SYNTHETIC_ROUNDS):
        path = root / f"{op}_r{rnd}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for i, d in enumerate(docs[k::2]):
                words = d.text.split()
                text = " ".join(words[::-1] if k % 2 else words[: max(8, len(words) // (k + 1))])
                fh.write(json.dumps({"source_id": d.id, "operation": op, "text": text}) + "\n")
        out.append((op, rnd, str(path)))
    return out


def paths(streams, args, batch_sharding, label: str) -> dict:
    seqio_tps = rate(TrainBatches(streams.train, args.batch, batch_sharding), args.pipeline_steps)
    direct_tps = rate(
        TrainBatches(streams.train.mixture.stream(args.seq), args.batch, batch_sharding), args.pipeline_steps
    )
    print(f"{label}: seqio path {seqio_tps:,.0f} tok/s | direct {direct_tps:,.0f} tok/s", flush=True)
    return {"seqio_tokens_per_s": seqio_tps, "direct_tokens_per_s": direct_tps}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pipeline_steps", type=int, default=200)
    p.add_argument("--train_steps", type=int, default=10)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)

    cache = Path(tempfile.mkdtemp(prefix="synpro-bench-"))
    if SHARED.is_dir():
        organic = (
            str(SHARED / "openwebtext_900.jsonl"),
            str(SHARED / "dclm_annotated_web.jsonl"),
            str(SHARED / "c4-sample.0*.json.gz"),
        )
        data = DataConfig(
            corpus="organic",
            organic=organic,
            vocabulary=TrainedSentencePiece(4096),
            validation_docs=60,
            cache_dir=str(cache),
        )
        source = "shared/data/organic"
    else:
        data = DataConfig(
            corpus="markov",
            organic=("markov:4096:4000:257",),
            vocabulary=PassthroughVocabulary(4096, 1),
            validation_docs=60,
            cache_dir=str(cache),
        )
        source = "built-in Markov corpus (shared/data absent)"
    print(f"data: {source}", flush=True)

    # tokenization (vocabulary training happens first and is not counted)
    resolve_vocabulary(
        data.vocabulary,
        cache_dir=data.cache_dir,
        corpus=data.corpus,
        texts=lambda: (d.text for d in open_organic(data) if d.text),
    )
    t = time.perf_counter()
    streams = build_streams(data, args.seq, progress=False)
    tok_s = time.perf_counter() - t
    organic = next(iter(streams.info["tasks"].values()))
    tokenize = {
        "seconds": tok_s,
        "documents_per_s": organic["documents"] / tok_s,
        "tokens_per_s": organic["tokens"] / tok_s,
        "documents": organic["documents"],
        "tokens": organic["tokens"],
    }
    print(
        f"tokenize: {organic['documents']:,} docs, {organic['tokens']:,} tokens in {tok_s:.2f}s "
        f"({tokenize['tokens_per_s']:,.0f} tok/s)",
        flush=True,
    )

    cfg = models.get_preset(args.preset)
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1, 1))
    step = TrainStep(cfg, mesh, OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
    one = paths(streams, args, step.batch_sharding, "organic only")

    six_data = DataConfig(**{**data.__dict__, "corpus": "six", "synthetic": synthetic_shards(data, cache)})
    six = build_streams(six_data, args.seq, progress=False)
    six_result = paths(six, args, step.batch_sharding, "six streams")
    mixed = six.train.mixture.stream(args.seq)
    rows_read = (args.pipeline_steps + 1) * args.batch
    six_result["streams"] = {
        name: {
            **six.info["tasks"][name],
            "epochs_built": s.epochs_built,
            "epochs_touched": int(np.ceil(rows_read * s.row_len * s_rate / s.epoch_tokens)) + 1,
        }
        for name, s, s_rate in zip(mixed.names, mixed.streams, mixed.rates)
    }

    batches = TrainBatches(streams.train, args.batch, step.batch_sharding)
    state = step.init(jax.random.key(0))
    state, m = step(state, batches(0)[0])
    jax.block_until_ready(m)
    pre = [batches(s)[0] for s in range(args.train_steps)]
    t = time.perf_counter()
    for b in pre:
        state, m = step(state, b)
    jax.block_until_ready(m)
    train_s = (time.perf_counter() - t) / args.train_steps
    trainer_tps = args.batch * args.seq / train_s
    ratio = one["seqio_tokens_per_s"] / trainer_tps
    print(
        f"trainer ({args.preset}): {train_s * 1e3:.1f} ms/step -> {trainer_tps:,.0f} tok/s | the seqio path is "
        f"{ratio:.1f}x faster",
        flush=True,
    )

    report = {
        "benchmark": "data_pipeline",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "device": jax.devices()[0].device_kind},
        "data": source,
        "preset": args.preset,
        "batch": args.batch,
        "seq": args.seq,
        "tokenize": tokenize,
        "pipeline": one,
        "six_stream_mixture": six_result,
        "trainer": {"ms_per_step": train_s * 1e3, "tokens_per_s": trainer_tps},
        "seqio_pipeline_over_trainer": ratio,
        "goal_seqio_tokens_per_s": 1_000_000,
        "mixture": streams.info["tasks"],
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
