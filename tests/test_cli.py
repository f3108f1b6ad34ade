"""The `synpro` command line, run as a real subprocess as a user would."""

import json
import os
import subprocess
import sys

import pytest


def synpro(*args, cwd=None):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "synpro_jax.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_presets_lists_parameter_counts():
    out = synpro("presets")
    assert out.returncode == 0, out.stderr
    assert "olmo_400m: 474.02M params" in out.stdout and "tiny:" in out.stdout


@pytest.mark.slow
def test_train_runs_sharded_and_refuses_to_clobber(tmp_path):
    run = tmp_path / "run"
    out = synpro("train", "--steps", "60", "--batch", "8", "--seq", "32", "--mesh", "2,2,2", "--log_every", "20", "--lr", "1e-2",
                 "--out_dir", str(run), "--export_hf", str(run / "hf"))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    assert records[-1]["loss"] < records[0]["loss"]
    assert {"tokens_per_s", "mfu", "grad_norm", "learning_rate"} <= set(records[-1])
    assert summary["heldout_loss"] < summary["unigram_entropy"]  # it learned the next-token structure
    assert (run / "hf" / "config.json").exists()

    again = synpro("train", "--steps", "2", "--out_dir", str(run))
    assert again.returncode == 2 and "exists from an earlier run" in again.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # nothing lost


def test_bad_config_is_a_one_line_error(tmp_path):
    out = synpro("train", "--preset", "huge", "--out_dir", str(tmp_path / "x"))
    assert out.returncode == 2 and "unknown model preset 'huge'" in out.stderr and "Traceback" not in out.stderr
    out = synpro("train", "--mesh", "3,1,1", "--out_dir", str(tmp_path / "y"))
    assert out.returncode == 2 and "data*fsdp*tensor = 3 but 8 devices" in out.stderr
