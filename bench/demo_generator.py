"""How fast does a small generator learn to rephrase and reformat the demo world's biographies from scratch?

The demo has no instruct model to start GRPO from, so its generators learn the skill by supervised rewriting on a
disjoint teaching population (synpro_jax/demo/sft.py). This measures that learning on 2 CPU cores: every
``--eval_every`` steps the generator rewrites organic biographies it never saw (people outside the teaching
population), sampled as GRPO samples (temperature 1.0, top-p 0.9), and each rewrite is scored exactly: the share
with exactly one heading, the world's fact score (facts stated minus wrong ones) and fact recall. Writes
``bench/results/demo_generator.json``.

    python bench/demo_generator.py [--steps 600] [--d_model 128] [--layers 4]
"""

from __future__ import annotations

import argparse
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
from synpro_jax.data.vocab import load_vocabulary  # noqa: E402
from synpro_jax.demo import sft  # noqa: E402
from synpro_jax.demo import world as W  # noqa: E402
from synpro_jax.demo.tokenizer import train_world_tokenizer  # noqa: E402
from synpro_jax.generation import prompts  # noqa: E402
from synpro_jax.generation.sampler import Sampler  # noqa: E402
from synpro_jax.train import OptimizerConfig  # noqa: E402
from synpro_jax.train.step import TrainStep  # noqa: E402


def world_vocabulary(world, path: Path, size: int):
    if not path.exists():
        rng = np.random.default_rng(0)
        texts = [d["text"] for d in world.organic()] + [W.organic_biography(p) for p in world.teachers]
        texts += [W.answer("reformat", W.rewrite_reformat(p, rng)) for p in world.teachers[:600]]
        texts += [W.answer("rephrase", W.rewrite_rephrase(p, rng)) for p in world.teachers[:600]]
        texts += [f"{q['prompt']} {q['completion']}" for q in world.reference()]
        train_world_tokenizer(texts, path, size)
    return load_vocabulary(str(path))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--eval_every", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=192)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--partial", type=float, default=0.5)
    p.add_argument("--rope_theta", type=float, default=10_000.0)
    p.add_argument("--head_dim", type=int, default=32)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant", "linear"])
    p.add_argument("--seed", type=int, default=0, help="the world, the initialization and the teaching batches")
    p.add_argument("--eval_people", type=int, default=24)
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_generator.json"))
    p.add_argument("--work", default="/tmp/demo_generator")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    world = W.make_world(people=300, teachers=2000, seed=args.seed)
    vocab = world_vocabulary(world, work / f"tokenizer{args.vocab_size}-seed{args.seed}.json", args.vocab_size)
    heads = max(args.d_model // args.head_dim, 1)
    cfg = models.get_preset("tiny").replace(
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=args.head_dim,
        rope_theta=args.rope_theta,
        mlp_dim=4 * args.d_model,
        vocab_size=vocab.vocab_size,
        max_seq_len=1024,
        name="demo_generator",
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    ts = TrainStep(
        cfg,
        mesh,
        OptimizerConfig(
            learning_rate=args.lr,
            warmup_steps=30,
            schedule=args.schedule,
            total_steps=args.steps,
            weight_decay=0.0,
            clip_norm=1.0,
        ),
    )
    state = ts.init(jax.random.key(args.seed))
    stream = sft.TeachingStream(world.teachers, vocab, seed=args.seed, partial=args.partial)
    sampler = Sampler(cfg, state.params, mesh=mesh)
    people = world.people[: args.eval_people]
    history, samples = [], {}

    def evaluate(step: int) -> None:
        sampler.update_params(state.params)
        row = {"step": step}
        for op in prompts.OPERATIONS:
            texts = []
            scores = sft.evaluate_rewrites(
                sampler,
                vocab,
                people,
                op,
                max_new_tokens=160 if op == "reformat" else 80,
                seed=step,
                on_text=lambda person, t: texts.append(t),
            )
            row.update({f"{op}/{k}": v for k, v in scores.items()})
            samples[f"{op}@{step}"] = {"source": W.organic_biography(people[0]), "rewrite": texts[0]}
        history.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    evaluate(0)
    start, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        state, metrics = ts(state, ts.shard_batch(stream.batch(step, args.batch, args.length)))
        if step % 25 == 0:
            losses.append({"step": step, "answer_loss": float(metrics["loss"])})
        if step % args.eval_every == 0 or step == args.steps:
            print(
                f"step {step}: answer loss {float(metrics['loss']):.3f}, "
                f"{(time.perf_counter() - start) / step:.2f} s/step",
                flush=True,
            )
            evaluate(step)
    seconds = time.perf_counter() - start
    out = {
        "device": str(jax.devices()[0].device_kind),
        "args": vars(args),
        "params": cfg.num_params(),
        "seconds_training_and_eval": round(seconds, 1),
        "history": history,
        "losses": losses,
        "samples": samples,
    }
    atomic.write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
