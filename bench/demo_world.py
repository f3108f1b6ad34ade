"""Does the demo's biography world show SynPro's effect with this project's own trainer and evaluation?

Two arms of the same model trained for the same number of tokens, from scratch:

- ``repetition``: one organic biography per person, repeated for many epochs;
- ``rephrased``: the organic biography plus ``--rephrasings`` perfect rephrasings per person (other templates,
  another order): the ceiling a learned generator can reach.

Each arm is scored on the test biographies (loss per token, in frames reserved from every training text) and
on 4-way questions asked in a phrasing no biography uses (chance 0.25), with the same harness as ``synpro eval``. Writes
``bench/results/demo_world.json``.

    python bench/demo_world.py [--people 300] [--tokens 970000] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synpro_jax import atomic, models, sharding  # noqa: E402
from synpro_jax.data.corpus import TokenizedCorpus  # noqa: E402
from synpro_jax.data.packing import PackedStream  # noqa: E402
from synpro_jax.data.vocab import load_vocabulary, train_sentencepiece  # noqa: E402
from synpro_jax.demo import world as W  # noqa: E402
from synpro_jax.eval import harness  # noqa: E402
from synpro_jax.eval.tasks import MCItem  # noqa: E402
from synpro_jax.train import OptimizerConfig  # noqa: E402
from synpro_jax.train.trainer import Trainer, TrainerConfig  # noqa: E402


def model_config(vocab_size: int):
    return models.get_preset("tiny").replace(
        d_model=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        head_dim=32,
        mlp_dim=512,
        vocab_size=vocab_size,
        max_seq_len=256,
        name="demo_lm",
    )


def corpus(texts, vocab) -> TokenizedCorpus:
    return TokenizedCorpus.from_token_lists([vocab.encode(t) for t in texts], [str(i) for i in range(len(texts))])


def run_arm(name, texts, vocab, world, args, work: Path, seed: int) -> dict:
    cfg = model_config(vocab.vocab_size)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    steps = args.tokens // (args.batch * args.seq_len)
    held = [d["text"] for d in world.test()]  # the test wording, reserved from every training text
    trainer = Trainer(
        cfg,
        mesh,
        OptimizerConfig(learning_rate=args.lr, warmup_steps=20, schedule="cosine", total_steps=steps, weight_decay=0.1),
        TrainerConfig(
            out_dir=str(work / f"{name}_s{seed}"),
            num_steps=steps,
            global_batch=args.batch,
            seq_len=args.seq_len,
            log_every=50,
            eval_every=max(steps // 4, 1),
            eval_batches=4,
            checkpoint_every=steps,
            async_checkpoints=False,
            seed=seed,
            progress=False,
        ),
        train_stream=PackedStream(corpus(texts, vocab), args.seq_len + 1, vocab.eos_id, seed=seed),
        val_stream=PackedStream(corpus(held, vocab), args.seq_len + 1, vocab.eos_id, seed=0, shuffle=False),
    )
    start = time.perf_counter()
    summary = trainer.run()
    seconds = time.perf_counter() - start
    params = trainer.state["train"].params
    scorer = harness.LoglikelihoodScorer(cfg, params, rows=64, max_len=cfg.max_seq_len)
    items = [MCItem(q["context"], tuple(q["choices"]), q["label"]) for q in world.qa()]
    qa = harness.score_multiple_choice(scorer, items, vocab, vocab.eos_id)
    return {
        "arm": name,
        "seed": seed,
        "steps": steps,
        "train_tokens": steps * args.batch * args.seq_len,
        "unique_tokens": int(sum(len(vocab.encode(t)) for t in texts)),
        "heldout_loss": summary.get("val_loss"),
        "qa_acc": qa["acc"],
        "qa_acc_norm": qa["acc_norm"],
        "qa_items": qa["items"],
        "seconds": round(seconds, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=int, default=300)
    p.add_argument("--rephrasings", type=int, default=4)
    p.add_argument("--tokens", type=int, default=970_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_world.json"))
    p.add_argument("--work", default="/tmp/demo_world")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        world = W.make_world(people=args.people, teachers=0, reference_fraction=0.0, seed=seed)
        organic = [d["text"] for d in world.organic()]
        rng = np.random.default_rng([seed, 7])
        rephrased = organic + [W.rewrite_rephrase(p, rng) for p in world.people for _ in range(args.rephrasings)]
        sp = work / f"sp{args.vocab_size}_s{seed}.model"
        if not sp.exists():
            texts = organic + rephrased + [d["text"] for d in world.test()] + [q["context"] for q in world.qa()]
            train_sentencepiece(texts, sp, args.vocab_size)
        vocab = load_vocabulary(str(sp))
        for name, texts in (("repetition", organic), ("rephrased", rephrased)):
            r = run_arm(name, texts, vocab, world, args, work, seed)
            print(json.dumps(r), flush=True)
            results.append(r)
    out = {
        "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(),
        "args": vars(args),
        "results": results,
    }
    atomic.write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
