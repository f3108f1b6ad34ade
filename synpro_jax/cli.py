"""`synpro <command>`: the command line of synpro_jax.

    synpro presets                       # the model sizes and their parameter counts
    synpro train                         # train the default preset on the built-in Markov corpus
    synpro train --preset cpu_small --steps 500 --mesh 2,1,1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _mesh_arg(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected three integers DATA,FSDP,TENSOR") from None
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected three integers DATA,FSDP,TENSOR")
    return sizes  # type: ignore[return-value]


def cmd_presets(args) -> int:
    from synpro_jax.models import describe_presets

    print(describe_presets())
    return 0


def cmd_train(args) -> int:
    import jax
    import numpy as np

    from synpro_jax import models, sharding
    from synpro_jax.data import MarkovCorpus
    from synpro_jax.models import hf
    from synpro_jax.train import OptimizerConfig, TrainStep, loop

    cfg = models.get_preset(args.preset, dtype=args.dtype)
    out_dir = Path(args.out_dir)
    metrics_path = out_dir / "metrics.jsonl"
    if metrics_path.exists() and not args.overwrite:
        print(f"error: {metrics_path} exists from an earlier run; pick another --out_dir or pass --overwrite",
              file=sys.stderr)
        return 2
    if metrics_path.exists():
        metrics_path.unlink()
    export = Path(args.export_hf) if args.export_hf else None
    if export and export.exists() and any(export.iterdir()) and not args.overwrite:
        print(f"error: --export_hf {export} is not empty; pick another directory or pass --overwrite",
              file=sys.stderr)
        return 2
    if args.seq + 1 > cfg.max_seq_len:
        print(f"error: --seq {args.seq} exceeds the preset's max_seq_len {cfg.max_seq_len}", file=sys.stderr)
        return 2

    mesh = sharding.make_mesh(sharding.MeshConfig(*args.mesh))
    warmup = args.steps // 10 if args.warmup is None else args.warmup
    opt = OptimizerConfig(learning_rate=args.lr, warmup_steps=warmup, schedule="cosine",
                          total_steps=args.steps)
    step = TrainStep(cfg, mesh, opt, z_loss=args.z_loss)
    corpus = MarkovCorpus(vocab_size=cfg.vocab_size, seed=args.seed)
    print(cfg.describe())
    print(f"mesh {sharding.devices_summary(mesh)} | batch {args.batch} x seq {args.seq} | {args.steps} steps")
    print(f"data: built-in Markov corpus (vocab {cfg.vocab_size}); loss floor = entropy rate "
          f"{corpus.entropy_rate:.3f} nats, context-free = unigram entropy {corpus.unigram_entropy:.3f} nats")
    state = step.init(jax.random.key(args.seed))
    state, history = loop.run(step, state, corpus.batches(args.batch, args.seq + 1, seed=args.seed + 1),
                              num_steps=args.steps, log_every=args.log_every, metrics_path=metrics_path)

    # held-out loss on fresh rows from the same chain
    eval_rows = corpus.sample(args.batch, args.seq + 1, np.random.default_rng(10_000 + args.seed))
    sums, _ = step.loss_and_grads(state.params, step.shard_batch({"inputs": eval_rows[:, :-1],
                                                                  "targets": eval_rows[:, 1:]}))
    summary = {
        "preset": cfg.name,
        "steps": int(state.step),
        "train_loss": history[-1]["loss"],
        "heldout_loss": float(sums.nll / sums.tokens),
        "entropy_rate": corpus.entropy_rate,
        "unigram_entropy": corpus.unigram_entropy,
        "tokens_per_s": history[-1]["tokens_per_s"],
        "mfu": history[-1]["mfu"],
        "metrics": str(metrics_path),
    }
    if export:
        summary["hf_export"] = str(hf.save(cfg, jax.device_get(state.params), export, overwrite=args.overwrite))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synpro", description="SynPro in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list model presets with their parameter counts")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a preset on the built-in Markov corpus (sharded, with metrics)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)")
    p.add_argument("--z_loss", type=float, default=1e-4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--mesh", type=_mesh_arg, default=(-1, 1, 1), help="DATA,FSDP,TENSOR sizes; -1 = infer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--out_dir", default="runs/synpro_train")
    p.add_argument("--export_hf", default=None, help="also write the trained model as an HF Olmo2 directory")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError) as e:  # config errors name their knob; no traceback needed
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
