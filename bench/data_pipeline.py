"""Input pipeline throughput against the trainer's consumption, on the same batches.

Builds the CPU experiment's data (organic text from ../shared/data/organic, or the built-in Markov corpus when
that folder is absent), then measures in one process:
  - tokenization: documents/s and tokens/s of the first (uncached) pass;
  - the pipeline: tokens/s of producing sharded global batches (packing, mixing, loss masks, device transfer);
  - the trainer: tokens/s of cpu_small train steps on those batches.
The pipeline should be at least 10x faster than the trainer so that data never limits training.

    python bench/data_pipeline.py [--seq 256 --batch 16 --preset cpu_small]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402
from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.data.pipeline import TrainBatches  # noqa: E402
from synpro_jax.data.tasks import DataConfig, build_streams  # noqa: E402
from synpro_jax.train import OptimizerConfig, TrainStep  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "organic"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_pipeline.json"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pipeline_steps", type=int, default=200)
    p.add_argument("--train_steps", type=int, default=10)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)

    cache = tempfile.mkdtemp(prefix="synpro-bench-")
    if SHARED.is_dir():
        organic = (str(SHARED / "openwebtext_900.jsonl"), str(SHARED / "dclm_annotated_web.jsonl"),
                   str(SHARED / "c4-sample.0*.json.gz"))
        data = DataConfig(corpus="organic", organic=organic, vocabulary="train-sentencepiece:4096",
                          validation_docs=60, cache_dir=cache)
        source = "shared/data/organic"
    else:
        data = DataConfig(corpus="markov", organic=("markov:4096:4000:257",), vocabulary="passthrough:4096:1",
                          validation_docs=60, cache_dir=cache)
        source = "built-in Markov corpus (shared/data absent)"
    print(f"data: {source}", flush=True)

    # tokenization (vocabulary training happens first and is not counted)
    from synpro_jax.data.tasks import _vocabulary

    _vocabulary(data)
    t = time.perf_counter()
    streams = build_streams(data, args.seq, progress=False)
    tok_s = time.perf_counter() - t
    organic = next(iter(streams.info["tasks"].values()))
    tokenize = {"seconds": tok_s, "documents_per_s": organic["documents"] / tok_s,
                "tokens_per_s": organic["tokens"] / tok_s, "documents": organic["documents"],
                "tokens": organic["tokens"]}
    print(f"tokenize: {organic['documents']:,} docs, {organic['tokens']:,} tokens in {tok_s:.2f}s "
          f"({tokenize['tokens_per_s']:,.0f} tok/s)", flush=True)

    cfg = models.get_preset(args.preset)
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1, 1))
    step = TrainStep(cfg, mesh, OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
    batches = TrainBatches(streams.train, args.batch, step.batch_sharding)
    tokens_per_step = args.batch * args.seq

    batches(0)  # warm caches
    t = time.perf_counter()
    for s in range(args.pipeline_steps):
        batch, _ = batches(s)
    jax.block_until_ready(batch)
    pipe_s = (time.perf_counter() - t) / args.pipeline_steps
    pipeline_tps = tokens_per_step / pipe_s
    print(f"pipeline: {pipe_s * 1e3:.2f} ms/batch -> {pipeline_tps:,.0f} tok/s", flush=True)

    state = step.init(jax.random.key(0))
    state, m = step(state, batches(0)[0])
    jax.block_until_ready(m)
    pre = [batches(s)[0] for s in range(args.train_steps)]
    t = time.perf_counter()
    for b in pre:
        state, m = step(state, b)
    jax.block_until_ready(m)
    train_s = (time.perf_counter() - t) / args.train_steps
    trainer_tps = tokens_per_step / train_s
    ratio = pipeline_tps / trainer_tps
    print(f"trainer ({args.preset}): {train_s * 1e3:.1f} ms/step -> {trainer_tps:,.0f} tok/s | pipeline is "
          f"{ratio:.1f}x faster", flush=True)

    report = {
        "benchmark": "data_pipeline",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "device": jax.devices()[0].device_kind},
        "data": source, "preset": args.preset, "batch": args.batch, "seq": args.seq,
        "tokenize": tokenize,
        "pipeline": {"ms_per_batch": pipe_s * 1e3, "tokens_per_s": pipeline_tps},
        "trainer": {"ms_per_step": train_s * 1e3, "tokens_per_s": trainer_tps},
        "pipeline_over_trainer": ratio,
        "mixture": streams.info["tasks"],
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
