"""A small GRPO job for the kill-and-resume tests, run as a real subprocess: python grpo_job.py WORKSPACE OUT STEPS.

``make_workspace`` also gives the CLI tests their generator: a random tiny OLMo-2 saved as an HF directory with a
SentencePiece ``tokenizer.model``, and a JSONL file of organic-looking documents.
"""

import json
import os
from pathlib import Path
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

WORDS = "the a cat dog river stone light quickly under over green blue seven runs sleeps reads map city".split()
MAX_PROMPT_TOKENS = 512


def make_workspace(root: Path) -> dict:
    from synpro_jax import models
    from synpro_jax.data.vocab import train_sentencepiece
    from synpro_jax.generation import prompts
    from synpro_jax.models import hf

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    docs = [" ".join(" ".join(rng.choice(WORDS, 8)).capitalize() + "." for _ in range(3)) for _ in range(12)]
    organic = root / "organic.jsonl"
    organic.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    # The instructions go into the vocabulary's training text so prompts stay short for the tiny model.
    chat = [part for op in prompts.OPERATIONS for part in prompts.prompt_parts(op)]
    sp = train_sentencepiece(docs + chat * 3, root / "sp.model", 480)
    cfg = models.get_preset("tiny").replace(vocab_size=480, max_seq_len=1024)
    generator = hf.save(cfg, models.init_params(cfg, jax.random.key(1)), root / "generator")
    (generator / "tokenizer.model").write_bytes(Path(sp).read_bytes())
    return {"organic": organic, "generator": generator, "vocab": generator / "tokenizer.model", "cfg": cfg}


class LetterShare:
    """A cheap reward that varies between completions (so advantages are not all zero): the share of 'e'."""

    name = "letter_e"

    def __call__(self, inputs):
        return np.array([c.count("e") / max(len(c), 1) for c in inputs.completions], np.float32)


def main(workspace: str, out_dir: str, steps: int) -> int:
    from synpro_jax import distributed, sharding
    from synpro_jax.data.vocab import load_vocabulary
    from synpro_jax.exit_codes import EXIT_PREEMPTED
    from synpro_jax.models import hf
    from synpro_jax.rl.config import GRPOConfig
    from synpro_jax.rl.prompt_set import PromptSet
    from synpro_jax.rl.rewards.base import RewardSuite, make_reward
    from synpro_jax.rl.trainer import GRPORunConfig, GRPOTrainer

    distributed.initialize()  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID: one job of several
    ws = Path(workspace)
    cfg, params = hf.load(ws / "generator")
    vocab = load_vocabulary(str(ws / "generator" / "tokenizer.model"))
    algo = GRPOConfig(
        num_generations=4,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_completion_tokens=16,
        learning_rate=3e-3,
        warmup_ratio=0.0,
    )
    prompt_set = PromptSet([str(ws / "organic.jsonl")], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS)
    suite = RewardSuite({"letter_e": LetterShare(), "format": make_reward("format")}, {"letter_e": 1.0, "format": 1.0})
    run = GRPORunConfig(
        out_dir=out_dir,
        num_steps=steps,
        prompts_per_step=2 * max(1, jax.device_count() // 4),
        accum_steps=2,
        checkpoint_every=2,
        keep_checkpoints=2,
        progress=False,
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(-1, 2, 1))
    trainer = GRPOTrainer(cfg, mesh, params, vocab, prompt_set, suite, run, algo)
    summary = trainer.run()
    final = jax.tree.map(sharding.to_host, trainer.state.params)  # every process takes part in the gather
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(final)[0]}
    if jax.process_index() == 0:
        np.savez(os.path.join(out_dir, "final_params.npz"), **flat)
    return EXIT_PREEMPTED if summary["preempted"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
