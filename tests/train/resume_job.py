"""A small training job for the resume tests, run as a real subprocess: python resume_job.py OUT_DIR STEPS.

It reads its input as a real run does: through a registered seqio Mixture (two streams, the smaller one
repeated for several epochs)."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.data import tasks  # noqa: E402
from synpro_jax.data.corpus import TokenizedCorpus  # noqa: E402
from synpro_jax.data.packing import PackedStream  # noqa: E402
from synpro_jax.data.streams import MixtureInput  # noqa: E402
from synpro_jax.data.vocab import PassthroughVocabulary, load_vocabulary  # noqa: E402
from synpro_jax.exit_codes import EXIT_PREEMPTED
from synpro_jax.train import OptimizerConfig  # noqa: E402
from synpro_jax.train.trainer import Trainer, TrainerConfig  # noqa: E402


def corpus(seed: int, n: int = 120) -> TokenizedCorpus:
    rng = np.random.default_rng(seed)
    docs = [(rng.integers(2, 60) + np.arange(rng.integers(3, 40))) % 64 + 2 for _ in range(n)]
    return TokenizedCorpus.from_token_lists(docs, [f"doc{i}" for i in range(len(docs))])


def main(out_dir: str, steps: int) -> int:
    cfg = models.get_preset("tiny")
    vocab = load_vocabulary(PassthroughVocabulary(256, 1))
    corpora = {"synpro_resume_organic": corpus(0), "synpro_resume_rephrase_r1": corpus(2, n=15)}
    for name, c in corpora.items():
        tasks.register_corpus_task(name, {"train": c}, vocab)
    tasks.register_mixture(
        "synpro_resume_mix",
        tasks.MixtureSpec(
            corpora, {"synpro_resume_organic": 2.0, "synpro_resume_rephrase_r1": 1.0}, eos_id=1, block_rows=16, seed=0
        ),
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 1))
    trainer = Trainer(
        cfg,
        mesh,
        OptimizerConfig(learning_rate=3e-3, warmup_steps=5),
        TrainerConfig(
            out_dir=out_dir,
            num_steps=steps,
            global_batch=8,
            seq_len=32,
            log_every=1,
            eval_every=10,
            eval_batches=1,
            checkpoint_every=3,
            keep_checkpoints=2,
            progress=False,
        ),
        train_stream=MixtureInput("synpro_resume_mix", 32),
        val_stream=PackedStream(corpus(1), 33, eos_id=1, seed=0, shuffle=False),
    )
    summary = trainer.run()
    params = jax.device_get(trainer.state["train"].params)
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(os.path.join(out_dir, "final_params.npz"), **flat)
    return EXIT_PREEMPTED if summary["preempted"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
