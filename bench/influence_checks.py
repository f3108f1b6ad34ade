"""Two checks of the influence probe, run as the release runs it, on a small CPU model pretrained on
../shared/data/organic, with FLAN qasc as the reference task (run `synpro train
--gin_file=gin/experiments/cpu_organic.gin` first; the probe continues that run's AdamW moments and step).

1. First-order agreement: after 1, 2, 3, 10, 30 and 100 probe steps, the Spearman rank correlation between
   influence's two paths, the exact L_theta - L_theta' and the first-order -grad L_x . (theta' - theta)
   (:func:`synpro_jax.influence.influence_scores`). It should be high for a small step and fall as theta' moves.
2. Usefulness, per seed: fine-tune theta' (100 steps; the seed orders the reference batches), score the organic
   documents, continue training theta on the top-k, bottom-k and random-k documents for the same number of
   steps, and measure the held-out reference-task loss after each. Reported as mean and spread over the seeds.

    python bench/influence_checks.py [--run runs/cpu_organic --docs 256 --k 200 --train_steps 60 --seeds 0,1,2]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import time

import jax
import numpy as np
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402

from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.data.corpus import TokenizedCorpus, build_corpus  # noqa: E402
from synpro_jax.data.packing import PackedStream  # noqa: E402
from synpro_jax.data.sources import open_source  # noqa: E402
from synpro_jax.data.vocab import load_vocabulary  # noqa: E402
from synpro_jax.influence import influence_scores  # noqa: E402
from synpro_jax.influence.kernel import example_losses  # noqa: E402
from synpro_jax.influence.probe import Probe, ProbeConfig, finetune  # noqa: E402
from synpro_jax.influence.reference import PackedReference, encode_examples  # noqa: E402
from synpro_jax.influence.run import reference_examples  # noqa: E402
from synpro_jax.train import OptimizerConfig, TrainStep, params_io  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "influence_checks.json"
SNAPSHOTS = (1, 2, 3, 10, 30, 100)


def reference_loss(cfg, params, tokens, mask, batch=32):
    losses = [
        np.asarray(example_losses(cfg, params, tokens[i : i + batch], mask[i : i + batch]))
        for i in range(0, len(tokens), batch)
    ]
    return float(np.mean(np.concatenate(losses)))


def both_paths(cfg, theta, tuned, probe: Probe, docs, pad_id, batch=32):
    exact, first = [], []
    for i in range(0, len(docs), batch):
        chunk = docs[i : i + batch]
        rows, mask = probe.rows(chunk, batch, pad_id)
        for out, method in ((exact, "exact"), (first, "first_order")):
            scores = influence_scores(cfg, theta, tuned, rows, loss_mask=mask, method=method)
            out.append(np.asarray(scores)[: len(chunk)])
    return np.concatenate(exact), np.concatenate(first)


def spread(values):
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "values": v.tolist(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(REPO / "runs" / "cpu_organic"))
    p.add_argument("--vocab", default=str(REPO / "runs" / "cache" / "organic_sp4096.model"))
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--probe_steps", type=int, default=100)
    p.add_argument("--probe_batch", type=int, default=16, help="packed reference rows per probe step")
    p.add_argument("--docs", type=int, default=256, help="documents in the first-order check")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--train_steps", type=int, default=60)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: these checks need the shared organic and FLAN data")
    if not Path(args.run).is_dir() or not Path(args.vocab).exists():
        sys.exit(f"{args.run} or {args.vocab} missing: run `synpro train --gin_file=gin/experiments/cpu_organic.gin`")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()

    cfg = models.get_preset(args.preset)
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1, 1))
    vocab = load_vocabulary(args.vocab)
    loaded = params_io.load(cfg, mesh, args.run, with_adam=True)
    theta = jax.device_get(loaded.params)
    examples = reference_examples([str(SHARED / "reference/flan_v2_cot/qasc_train.tsv")])
    held_tokens, held_mask = encode_examples(examples[-256:], vocab, args.seq)  # held out: the reference loss
    train_examples = examples[:-256]
    organic = [str(SHARED / "organic/openwebtext_900.jsonl"), str(SHARED / "organic/dclm_annotated_web.jsonl")]
    parts = [build_corpus(open_source(f), vocab, progress=False)[0] for f in organic]
    corpus = TokenizedCorpus.from_token_lists(
        [c.doc(i) for c in parts for i in range(c.num_docs)], [d for c in parts for d in c.doc_ids]
    )
    print(
        f"theta: {args.run} step {loaded.step}, Adam moments {'restored' if loaded.adam else 'absent'}; "
        f"{len(train_examples)} reference examples ({len(examples) - len(train_examples)} held out), "
        f"{corpus.num_docs} organic documents",
        flush=True,
    )

    def probe_cfg(seed):
        return ProbeConfig(steps=args.probe_steps, batch_size=args.probe_batch, seq_len=args.seq, seed=seed)

    # 1. first-order agreement as the probe takes more steps (seed 0)
    packed = PackedReference(train_examples, vocab, args.seq, seed=seeds[0])
    print(
        f"reference rows: {args.probe_batch} x {args.seq + 1} tokens, "
        f"{packed.batch(0, args.probe_batch)['loss_mask'].sum():.0f} answer tokens in step 1's batch",
        flush=True,
    )
    snapshots, ref_losses = {}, {}

    def keep(step, params, metrics):
        ref_losses[step] = float(metrics["loss"])
        if step in SNAPSHOTS:
            snapshots[step] = jax.device_get(params)

    finetune(cfg, mesh, loaded.params, packed, probe_cfg(seeds[0]), adam=loaded.adam, step=loaded.step, on_step=keep)
    sample = np.random.default_rng(0).permutation(corpus.num_docs)[: args.docs]
    probe_docs = [corpus.doc(i) for i in sample]
    first_order = []
    for s in sorted(snapshots):
        probe = Probe(cfg, mesh, theta, snapshots[s], max_len=args.seq)
        exact, first = both_paths(cfg, theta, snapshots[s], probe, probe_docs, vocab.pad_id)
        row = {
            "probe_steps": s,
            "spearman": float(spearmanr(exact, first).statistic),
            "pearson": float(pearsonr(exact, first).statistic),
            "sign_agreement": float(np.mean(np.sign(exact) == np.sign(first))),
            "exact_mean": float(exact.mean()),
            "first_order_mean": float(first.mean()),
            "probe_reference_loss": ref_losses[s],
        }
        first_order.append(row)
        print(
            f"first-order: {s:3d} probe steps -> Spearman {row['spearman']:.3f}, Pearson {row['pearson']:.3f}, "
            f"sign agreement {row['sign_agreement']:.2f} (exact mean {row['exact_mean']:+.5f}, first-order "
            f"mean {row['first_order_mean']:+.5f})",
            flush=True,
        )

    # 2. usefulness: per seed, continue training on top-k / bottom-k / random-k documents
    base_loss = reference_loss(cfg, theta, held_tokens, held_mask)
    all_docs = [corpus.doc(i) for i in range(corpus.num_docs)]
    per_seed = []
    for seed in seeds:
        if seed == seeds[0]:
            tuned = snapshots[max(snapshots)]
        else:
            tuned = jax.device_get(
                finetune(
                    cfg,
                    mesh,
                    loaded.params,
                    PackedReference(train_examples, vocab, args.seq, seed=seed),
                    probe_cfg(seed),
                    adam=loaded.adam,
                    step=loaded.step,
                )
            )
        influence = Probe(cfg, mesh, theta, tuned, max_len=args.seq).score_docs(all_docs, 32, vocab.pad_id)["influence"]
        order = np.argsort(-influence, kind="stable")
        subsets = {
            "top": order[: args.k],
            "bottom": order[-args.k :],
            "random": np.random.default_rng(1000 + seed).permutation(corpus.num_docs)[: args.k],
        }
        result = {"seed": seed, "probe_reference_loss_after": reference_loss(cfg, tuned, held_tokens, held_mask)}
        for name, idx in subsets.items():
            stream = PackedStream(corpus.subset(sorted(idx.tolist())), args.seq + 1, vocab.eos_id, seed=seed)
            step = TrainStep(cfg, mesh, OptimizerConfig(learning_rate=3e-4, warmup_steps=0, weight_decay=0.1))
            state = step.init(jax.random.key(seed), params=theta)
            for s in range(args.train_steps):
                rows = stream.rows(np.arange(s * 8, (s + 1) * 8)).training_batch()
                state, _ = step(state, step.shard_batch(rows))
            loss = reference_loss(cfg, jax.device_get(state.params), held_tokens, held_mask)
            result[name] = {
                "reference_loss": loss,
                "change": loss - base_loss,
                "mean_influence": float(influence[idx].mean()),
            }
            print(
                f"seed {seed} usefulness: {name:6s}-{args.k} docs (mean influence {influence[idx].mean():+.5f}) "
                f"-> reference loss {loss:.4f} ({loss - base_loss:+.4f})",
                flush=True,
            )
        per_seed.append(result)

    summary = {
        name: {
            "reference_loss": spread([r[name]["reference_loss"] for r in per_seed]),
            "change": spread([r[name]["change"] for r in per_seed]),
        }
        for name in ("top", "random", "bottom")
    }
    summary["top_minus_random"] = spread([r["top"]["reference_loss"] - r["random"]["reference_loss"] for r in per_seed])
    summary["top_minus_bottom"] = spread([r["top"]["reference_loss"] - r["bottom"]["reference_loss"] for r in per_seed])
    summary["seeds_ordered_top_random_bottom"] = sum(
        r["top"]["reference_loss"] < r["random"]["reference_loss"] < r["bottom"]["reference_loss"] for r in per_seed
    )
    for name in ("top", "random", "bottom"):
        s = summary[name]["reference_loss"]
        print(
            f"usefulness over {len(seeds)} seeds: {name:6s} reference loss {s['mean']:.4f} +- {s['std']:.4f} "
            f"(before {base_loss:.4f})",
            flush=True,
        )

    report = {
        "benchmark": "influence_checks",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": args.run,
        "theta_step": loaded.step,
        "adam_restored": loaded.adam is not None,
        "preset": args.preset,
        "seq": args.seq,
        "probe": {
            "steps": args.probe_steps,
            "batch_rows": args.probe_batch,
            "learning_rate": 1e-4,
            "schedule": "constant from step 1",
            "weight_decay": "0.1, norms decayed, embeddings not",
            "z_loss": 1e-5,
            "clip_norm": 1.0,
            "packed": True,
        },
        "first_order": first_order,
        "usefulness": {
            "reference_loss_before": base_loss,
            "k": args.k,
            "train_steps": args.train_steps,
            "seeds": seeds,
            "per_seed": per_seed,
            "summary": summary,
        },
        "seconds": time.time() - t0,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
