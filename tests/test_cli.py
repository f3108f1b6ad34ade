"""The `synpro` command line, run as a real subprocess as a user would."""

from importlib.metadata import version
import json
import os
from pathlib import Path
import subprocess
import sys
import zipfile

import pytest

import synpro_jax

REPO = Path(__file__).resolve().parents[1]


def synpro(*args, cwd=REPO, env=None):
    env = env or {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )


def a_new_users_env() -> dict:
    """The environment a user has: none of the test suite's or our own quieting settings."""
    drop = {"XLA_FLAGS", "JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST")}


def test_version():
    out = synpro("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"synpro_jax {version('synpro_jax')}" == f"synpro_jax {synpro_jax.__version__}"


@pytest.mark.slow
def test_a_new_users_first_run_from_any_directory_prints_no_errors(tmp_path):
    """From a directory without gin/, a user's own experiment in a --gin_search_paths folder includes the shipped
    default experiment; the run trains and prints no ERROR line (no TensorFlow/CUDA/absl/gin start-up chatter)."""
    conf, work = tmp_path / "conf", tmp_path / "work"
    conf.mkdir()
    work.mkdir()
    (conf / "quick.gin").write_text("include 'gin/experiments/markov_tiny.gin'\nNUM_STEPS = 2\n")
    out = synpro("train", f"--gin_search_paths={conf}", "--gin_file=quick.gin", cwd=work, env=a_new_users_env())
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (out.stdout + out.stderr).splitlines()
    assert [line for line in lines if "ERROR" in line or "Traceback" in line] == []
    assert not [line for line in lines if line.startswith(("I0000", "W0000", "E0000"))]  # C++ start-up lines
    assert json.loads((work / "runs/markov_tiny/summary.json").read_text())["step"] == 2


@pytest.mark.slow
def test_a_wheel_ships_the_gin_files(tmp_path):
    """A regular (non-editable) install carries gin/ as synpro_jax/gin, and includes resolve inside it."""
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("synpro_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        "synpro_jax/gin/experiments/markov_tiny.gin",
        "synpro_jax/gin/models/tiny.gin",
        "synpro_jax/gin/runs/pretrain.gin",
    } <= set(names)
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    (tmp_path / "cwd").mkdir()
    check = (
        "import gin, synpro_jax; from synpro_jax import configs\n"
        f"assert synpro_jax.__file__.startswith({str(site)!r}), synpro_jax.__file__\n"
        "configs.parse(['gin/experiments/markov_tiny.gin'], ['NUM_STEPS=2'])\n"
        "print(gin.get_bindings('synpro.preset')['name'], configs.gin_search_root())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path / "cwd",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["tiny", str(site / "synpro_jax")]


def test_presets_lists_parameter_counts():
    out = synpro("presets")
    assert out.returncode == 0, out.stderr
    assert "olmo_400m: 474.02M params" in out.stdout and "tiny:" in out.stdout


@pytest.mark.slow
def test_default_experiment_trains_sharded_and_resumes(tmp_path):
    run = tmp_path / "run"
    flags = [
        f"--gin.OUT_DIR='{run}'",
        "--gin.NUM_STEPS=40",
        "--gin.GLOBAL_BATCH=8",
        "--gin.SEQ_LEN=32",
        "--gin.synpro.MeshConfig.data=2",
        "--gin.synpro.MeshConfig.fsdp=2",
        "--gin.synpro.MeshConfig.tensor=2",
        "--gin.synpro.TrainerConfig.eval_every=20",
        "--gin.synpro.TrainerConfig.log_every=10",
        "--gin.LEARNING_RATE=1e-2",
        "--gin.WARMUP_STEPS=4",
        f"--gin.synpro.DataConfig.cache_dir='{tmp_path}/c'",
        "--gin.ORGANIC=['markov:256:300:33']",
    ]
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


@pytest.mark.slow
def test_mistakes_fail_before_work_with_one_line(tmp_path):
    def fails(*flags, says):
        out = synpro("train", *flags, f"--gin.OUT_DIR='{tmp_path}/x'")
        assert out.returncode == 2, out.stderr[-2000:]
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and says in out.stderr, out.stderr
        assert not (tmp_path / "x").exists()

    fails("--gin.LEARNING_RAT=1e-3", says="did you mean LEARNING_RATE")
    fails("--gin.synpro.preset.bogus=3", says="synpro.preset has no parameter 'bogus'")
    fails("--gin.synpro.preset.name='huge'", says="error: unknown model preset 'huge'; choose one of")
    fails("--gin_file=gin/runs/pretrain.gin", says="REQUIRED")


def test_vocab_train_cli(tmp_path):
    import zstandard

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"body": f"line {i} of some words and more words {i * 7}"}) + "\n" for i in range(300))
        + "{bad\n"
    )
    zst = tmp_path / "d.jsonl.zst"  # read through the one format dispatch, with the same --text_field
    zst.write_bytes(
        zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"body": f"more text {i}"}) + "\n" for i in range(50)).encode()
        )
    )
    out = synpro(
        "vocab",
        "train",
        "--corpus",
        str(corpus),
        str(zst),
        "--text_field",
        "body",
        "--vocab_size",
        "300",
        "--out",
        str(tmp_path / "v.model"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "50 documents kept" in out.stderr
    assert (tmp_path / "v.model").exists() and "malformed 1" in out.stderr
    again = synpro(
        "vocab",
        "train",
        "--corpus",
        str(corpus),
        "--text_field",
        "body",
        "--vocab_size",
        "300",
        "--out",
        str(tmp_path / "v.model"),
    )
    assert again.returncode == 2 and "exists" in again.stderr
