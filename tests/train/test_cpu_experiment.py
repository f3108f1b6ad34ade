"""The CPU experiment config on the real organic text: validation loss clearly below the corpus's unigram
entropy, with TensorBoard events and a loss-curve PNG."""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_organic_experiment_learns(shared_data, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "synpro_jax.cli",
            "train",
            "--gin_file=gin/experiments/cpu_organic.gin",
            f"--gin.OUT_DIR='{tmp_path / 'run'}'",
            f"--gin.synpro.DataConfig.cache_dir='{tmp_path / 'cache'}'",
            "--gin.NUM_STEPS=250",
            "--gin.synpro.TrainerConfig.eval_every=125",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_loss"] < summary["organic_unigram_entropy"] - 0.4, summary
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
