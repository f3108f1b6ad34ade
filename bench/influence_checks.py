"""Two checks of the influence probe on a small CPU model pretrained on ../shared/data/organic, with FLAN qasc
as the reference task (run `synpro train --gin_file=gin/experiments/cpu_organic.gin` first).

1. First-order agreement: Spearman rank correlation between the probe's L_theta - L_theta' and the jvp score
   -grad L_x . (theta' - theta), after 2, 3, 10, 30 and 100 probe steps (it should be high for a small step and
   fall as theta' moves away).
2. Usefulness: score the organic documents with the 100-step probe, continue training theta on the top-k,
   bottom-k and random-k documents for the same number of steps, and report the reference-task loss after each.

    python bench/influence_checks.py [--run runs/cpu_organic --docs 256 --k 200 --train_steps 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402
from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.data.corpus import TokenizedCorpus, build_corpus  # noqa: E402
from synpro_jax.data.packing import PackedStream  # noqa: E402
from synpro_jax.data.sources import JsonlSource  # noqa: E402
from synpro_jax.data.vocab import load_vocabulary  # noqa: E402
from synpro_jax.influence import grad_dot, tree_sub  # noqa: E402
from synpro_jax.influence.kernel import example_losses  # noqa: E402
from synpro_jax.influence.probe import Probe, ProbeConfig, finetune  # noqa: E402
from synpro_jax.influence.run import reference_rows  # noqa: E402
from synpro_jax.train.params_io import load_params  # noqa: E402
from synpro_jax.train import OptimizerConfig, TrainStep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "influence_checks.json"


def reference_loss(cfg, params, tokens, mask, batch=32):
    losses = [np.asarray(example_losses(cfg, params, tokens[i:i + batch], mask[i:i + batch]))
              for i in range(0, len(tokens), batch)]
    return float(np.mean(np.concatenate(losses)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(REPO / "runs" / "cpu_organic"))
    p.add_argument("--vocab", default=str(REPO / "runs" / "cache" / "organic_sp4096.model"))
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--docs", type=int, default=256, help="documents in the first-order check")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--train_steps", type=int, default=60)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: these checks need the shared organic and FLAN data")
    if not Path(args.run).is_dir() or not Path(args.vocab).exists():
        sys.exit(f"{args.run} or {args.vocab} missing: run `synpro train --gin_file=gin/experiments/cpu_organic.gin`")

    cfg = models.get_preset(args.preset)
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 1, 1))
    vocab = load_vocabulary(args.vocab)
    theta = jax.device_get(load_params(cfg, mesh, args.run))
    ref_tokens, ref_mask = reference_rows([str(SHARED / "reference/flan_v2_cot/qasc_train.tsv")], vocab, args.seq)
    held_tokens, held_mask = ref_tokens[-256:], ref_mask[-256:]  # held-out reference examples for the loss
    ref_tokens, ref_mask = ref_tokens[:-256], ref_mask[:-256]
    organic = [str(SHARED / "organic/openwebtext_900.jsonl"), str(SHARED / "organic/dclm_annotated_web.jsonl")]
    corpus = TokenizedCorpus.from_token_lists([], [])
    parts = [build_corpus(JsonlSource(f), vocab, progress=False)[0] for f in organic]
    docs = [c.doc(i) for c in parts for i in range(c.num_docs)]
    ids = [d for c in parts for d in c.doc_ids]
    corpus = TokenizedCorpus.from_token_lists(docs, ids)
    print(f"theta from {args.run}; {len(ref_tokens)} reference rows, {corpus.num_docs} organic documents")

    # 1. first-order agreement as the probe takes more steps
    snapshots = {}
    keep = {2, 3, 10, 30, 100}  # step 1 runs at warmup lr 0 (theta' = theta), so the first snapshot is step 2
    pcfg = ProbeConfig(steps=100, learning_rate=1e-4, warmup_steps=10, weight_decay=0.1, batch_size=16,
                       seq_len=args.seq)
    finetune(cfg, mesh, theta, ref_tokens, ref_mask, pcfg,
             on_step=lambda s, prm: snapshots.__setitem__(s, jax.device_get(prm)) if s in keep else None)
    sample = np.random.default_rng(0).permutation(corpus.num_docs)[: args.docs]
    probe_docs = [corpus.doc(i) for i in sample]
    first_order = []
    for s in sorted(snapshots):
        probe = Probe(cfg, mesh, theta, snapshots[s], max_len=args.seq)
        scores = probe.score_docs(probe_docs, 32, vocab.pad_id)
        jvp = []
        for i in range(0, len(probe_docs), 32):
            rows, mask = probe.rows(probe_docs[i:i + 32], 32, vocab.pad_id)
            out = grad_dot(cfg, theta, tree_sub(snapshots[s], theta), rows, loss_mask=mask)
            jvp.append(np.asarray(out)[: len(probe_docs[i:i + 32])])
        jvp = -np.concatenate(jvp)
        rho = float(spearmanr(scores["influence"], jvp).statistic)
        first_order.append({"probe_steps": s, "spearman": rho, "probe_mean": float(scores["influence"].mean()),
                            "jvp_mean": float(jvp.mean())})
        print(f"first-order: {s:3d} probe steps -> Spearman {rho:.3f}", flush=True)

    # 2. usefulness: continue training on top-k / bottom-k / random-k documents
    probe = Probe(cfg, mesh, theta, snapshots[100], max_len=args.seq)
    all_docs = [corpus.doc(i) for i in range(corpus.num_docs)]
    influence = probe.score_docs(all_docs, 32, vocab.pad_id)["influence"]
    order = np.argsort(-influence)
    subsets = {"top": order[: args.k], "bottom": order[-args.k:],
               "random": np.random.default_rng(1).permutation(corpus.num_docs)[: args.k]}
    base_loss = reference_loss(cfg, theta, held_tokens, held_mask)
    usefulness = {"reference_loss_before": base_loss, "k": args.k, "train_steps": args.train_steps}
    for name, idx in subsets.items():
        sub = corpus.subset(sorted(idx.tolist()))
        stream = PackedStream(sub, args.seq + 1, vocab.eos_id, seed=0)
        step = TrainStep(cfg, mesh, OptimizerConfig(learning_rate=3e-4, warmup_steps=0, weight_decay=0.1))
        state = step.init(jax.random.key(0), params=theta)
        for s in range(args.train_steps):
            rows = stream.rows(np.arange(s * 8, (s + 1) * 8)).training_batch()
            state, _ = step(state, step.shard_batch(rows))
        loss = reference_loss(cfg, jax.device_get(state.params), held_tokens, held_mask)
        usefulness[name] = {"reference_loss": loss, "mean_influence": float(influence[idx].mean())}
        print(f"usefulness: {name:6s}-{args.k} docs (mean influence {influence[idx].mean():+.4f}) -> reference "
              f"loss {loss:.4f} (before {base_loss:.4f})", flush=True)

    report = {"benchmark": "influence_checks", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "run": args.run, "preset": args.preset, "seq": args.seq, "first_order": first_order,
              "usefulness": usefulness}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
