"""The `synpro` command line, run as a real subprocess as a user would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def synpro(*args, cwd=REPO):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "synpro_jax.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def test_presets_lists_parameter_counts():
    out = synpro("presets")
    assert out.returncode == 0, out.stderr
    assert "olmo_400m: 474.02M params" in out.stdout and "tiny:" in out.stdout


@pytest.mark.slow
def test_default_experiment_trains_sharded_and_resumes(tmp_path):
    run = tmp_path / "run"
    flags = [f"--gin.OUT_DIR='{run}'", "--gin.NUM_STEPS=40", "--gin.GLOBAL_BATCH=8", "--gin.SEQ_LEN=32",
             "--gin.synpro.MeshConfig.data=2", "--gin.synpro.MeshConfig.fsdp=2", "--gin.synpro.MeshConfig.tensor=2",
             "--gin.synpro.TrainerConfig.eval_every=20", "--gin.synpro.TrainerConfig.log_every=10",
             "--gin.LEARNING_RATE=1e-2", "--gin.WARMUP_STEPS=4", f"--gin.synpro.DataConfig.cache_dir='{tmp_path}/c'",
             "--gin.ORGANIC=['markov:256:300:33']"]
    out = synpro("train", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[-1]["loss"] < records[0]["loss"] and "val_loss" in records[1]
    assert {"tokens_per_s", "mfu", "grad_norm", "learning_rate", "val_ppl"} <= set(records[-1])
    assert summary["step"] == 40 and (run / "loss_curve.png").stat().st_size > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "MeshConfig.tensor = 2" in (run / "config.gin").read_text()

    longer = synpro("train", *[f for f in flags if "NUM_STEPS" not in f], "--gin.NUM_STEPS=50")
    assert longer.returncode == 0, longer.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50]  # resumed at 40: nothing lost, nothing logged twice

    changed = synpro("train", *flags, "--gin.synpro.preset.mlp_dim=64")
    assert changed.returncode == 2 and "different configuration" in changed.stderr


def test_unknown_knob_and_missing_macros_fail_before_work(tmp_path):
    out = synpro("train", "--gin.synpro.TrainerConfig.bogus=1")
    assert out.returncode == 2 and "doesn't have a parameter named 'bogus'" in out.stderr
    out = synpro("train", "--gin_file=gin/runs/pretrain.gin")
    assert out.returncode == 2 and "REQUIRED" in out.stderr and "OUT_DIR" in out.stderr
    out = synpro("train", "--gin.synpro.preset.name='huge'", f"--gin.OUT_DIR='{tmp_path}/x'")
    assert out.returncode == 2 and "unknown model preset 'huge'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x").exists()


def test_vocab_train_cli(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"line {i} of some words and more words {i * 7}"}) + "\n"
                              for i in range(300)) + "{bad\n")
    out = synpro("vocab", "train", "--corpus", str(corpus), "--vocab_size", "300", "--out", str(tmp_path / "v.model"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "v.model").exists() and "malformed 1" in out.stderr
    again = synpro("vocab", "train", "--corpus", str(corpus), "--vocab_size", "300", "--out", str(tmp_path / "v.model"))
    assert again.returncode == 2 and "exists" in again.stderr
