"""`synpro demo --corpus FILES --reference FILES`: the same experiment on the user's own text (tiny settings),
and its config errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WORDS = "the a river stone light north small old bright city map reads runs under over green seven".split()

GIN = """
include 'gin/experiments/demo_corpus.gin'
synpro.DemoConfig.vocab_size = 600
synpro.preset.vocab_size = 640
synpro.preset.max_seq_len = 256
SEQ_LEN = 64
MAX_LEN = 64
ROUND_STEPS = [6, 4]
GRPO_STEPS = 1
PROMPTS_PER_STEP = 2
synpro.GRPOConfig.num_generations = 2
synpro.GRPOConfig.max_prompt_tokens = 192
synpro.GRPOConfig.max_completion_tokens = 8
synpro.grpo.influence_max_len = 64
synpro.GRPORunConfig.min_source_chars = 20
synpro.GRPORunConfig.checkpoint_every = 1
synpro.SynthesisConfig.max_prompt_tokens = 192
synpro.SynthesisConfig.max_new_tokens = 8
synpro.TrainerConfig.eval_every = 2
synpro.TrainerConfig.eval_batches = 1
synpro.TrainerConfig.checkpoint_every = 2
synpro.ProbeConfig.steps = 2
synpro.ProbeConfig.batch_size = 4
"""


def run(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_own_corpus_runs_the_experiment(tmp_path):
    rng = np.random.default_rng(0)
    corpus = tmp_path / "mine.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": " ".join(rng.choice(WORDS, 30)).capitalize() + "."}) + "\n" for _ in range(120))
    )
    reference = tmp_path / "ref.jsonl"
    reference.write_text(
        "".join(json.dumps({"prompt": f"Where is the {w}?", "completion": f"Under the {w}."}) + "\n" for w in WORDS)
    )
    (tmp_path / "tiny.gin").write_text(GIN)
    out = run(
        "--corpus",
        str(corpus),
        "--reference",
        str(reference),
        "--out",
        str(tmp_path / "demo"),
        "--gin_file",
        str(tmp_path / "tiny.gin"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    arms = {a["arm"]: a for a in report["arms"]}
    assert set(arms) >= {"round 0", "synpro", "repetition"} and len(arms) == 8  # and 5 oracle runs
    assert all("qa_last" not in a for a in arms.values()) and "qa_last" not in report["readings"]  # no world, no QA
    assert report["readings"]["test_loss_last"]["dof"] == 3 and report["test_hygiene"] is None
    validation = (tmp_path / "demo" / "corpus" / "validation.jsonl").read_text().splitlines()
    test = (tmp_path / "demo" / "corpus" / "test.jsonl").read_text().splitlines()
    organic = (tmp_path / "demo" / "corpus" / "organic.jsonl").read_text().splitlines()
    # every 2nd document held out, alternately for validation and test; a sixth of the rest is organic (the
    # largest oracle run reads 6 times as many)
    assert len(validation) == len(test) == 30 and not set(validation) & set(test) and len(organic) == 10
    assert report["generators"]["rephrase"]["after_grpo"]["records"] == 10

    bad = run(
        "--corpus", str(corpus), "--out", str(tmp_path / "bad"), "--gin_file", str(tmp_path / "tiny.gin"), cwd=tmp_path
    )
    assert bad.returncode == 2 and "needs --reference" in bad.stderr
    quick = run("--quick", "--corpus", str(corpus), cwd=tmp_path)
    assert quick.returncode == 2 and "--quick runs the built-in world" in quick.stderr
