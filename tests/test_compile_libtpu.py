"""libtpu and `synpro compile`: a TPU topology gets a verdict with or without libtpu (XLA:CPU's estimate on as many
CPU devices as it has chips, against its HBM), and libtpu on a machine without TPUs keeps quiet."""

import importlib.util
import os
from pathlib import Path
import subprocess
import sys

import pytest

from synpro_jax import cli
from synpro_jax import compile as aot

REPO = Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TPU_CHATTER = ("E0000", "TPU_WORKER_HOSTNAMES", "INVALID_ARGUMENT")
# markov_tiny's step with a 100352-token head over 4096 x 512 rows: float32 logits alone are 52 GB per device of a
# v4-32, over its 32 GiB; XLA:CPU compiles it in seconds (a 2-layer model).
TOO_BIG = ["--gin.synpro.preset.vocab_size=100352", "--gin.GLOBAL_BATCH=4096", "--gin.SEQ_LEN=512"]


def users_env(**extra) -> dict:
    """A user's environment: none of the suite's device or platform settings."""
    # (JAX in this process set TPU_LIBRARY_PATH when it found libtpu)
    drop = {
        "XLA_FLAGS",
        "JAX_PLATFORMS",
        "JAX_NUM_CPU_DEVICES",
        "TPU_LIBRARY_PATH",
        "TPU_SKIP_MDS_QUERY",
        cli.COMPILE_REEXEC,
    }
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@pytest.fixture
def without_libtpu(tmp_path, monkeypatch):
    """A PYTHONPATH on which `import libtpu` fails, as where it is not installed (for the processes started)."""
    shadow = tmp_path / "no_libtpu" / "libtpu"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('libtpu is hidden by the test')\n")
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)  # JAX in this process set it when it found libtpu
    return path


def synpro(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )


def test_chip_counts_are_the_devices_jax_sees():
    assert [aot.chip_count(t) for t in ("v5e-8", "v4-32", "v5p-8", "v6e-8", "v5e-16")] == [8, 16, 4, 8, 16]
    with pytest.raises(ValueError, match="--topology='v9-8'"):
        aot.chip_count("v9-8")


def test_without_libtpu_a_topology_gets_xla_cpus_estimate_against_its_hbm(without_libtpu):
    """A fresh process starts JAX with the topology's 8 chips as CPU devices and says whose estimate it is."""
    result = synpro(
        "compile",
        "--gin_file=gin/experiments/markov_tiny.gin",
        "--topology=v5e-8",
        env=users_env(PYTHONPATH=without_libtpu),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("train step"))
    assert "on XLA:CPU's estimate for v5e-8 (8 CPU devices standing in for its chips" in line
    assert "libtpu cannot describe v5e-8" in line and "(8 devices, mesh {'data': 8" in line
    assert line.endswith("of 16.00 GiB HBM (fits)")


@pytest.mark.slow  # reruns itself in a fresh process; the estimate from one is pinned above
def test_without_libtpu_a_program_over_the_chips_hbm_fails_from_a_process_with_too_few_devices(
    without_libtpu, monkeypatch, capfd
):
    """This process's JAX is up with 8 CPU devices; a v4-32 has 16 chips: the command reruns itself in a fresh
    process with 16, whose verdict (does not fit its 32 GiB) and exit status are the command's."""
    monkeypatch.setattr(aot, "_describe", lambda name: (_ for _ in ()).throw(RuntimeError("no libtpu here")))
    monkeypatch.delenv(cli.COMPILE_REEXEC, raising=False)
    code = cli.main(["compile", "--gin_file=gin/experiments/markov_tiny.gin", "--topology=v4-32", *TOO_BIG])
    out, err = capfd.readouterr()
    assert code == 1, err[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("train step"))
    assert "XLA:CPU's estimate for v4-32 (16 CPU devices" in line and "(16 devices, mesh {'data': 16" in line
    assert line.endswith("of 32.00 GiB HBM (DOES NOT FIT)")
    assert "error: train_step needs" in err and "but v4-32 has 32.00 GiB" in err


def test_topology_cpu_without_a_budget_is_refused():
    code = cli.main(["compile", "--gin_file=gin/experiments/markov_tiny.gin", "--topology=cpu"])
    assert code == 2


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[test]')")
def test_libtpu_without_a_tpu_keeps_every_command_quiet():
    """JAX would try libtpu's TPU backend first and log INVALID_ARGUMENT ... TPU_WORKER_HOSTNAMES: a command that
    starts JAX's backend (building the mesh: too many data shards, exit 2) says only its own error."""
    result = synpro("train", "--gin.synpro.MeshConfig.data=3", env=users_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: MeshConfig {'data': 3"), result.stderr
    assert not [x for x in result.stderr.splitlines() if any(c in x for c in TPU_CHATTER)], result.stderr


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[test]')")
def test_compile_reaches_libtpu_quietly():
    result = synpro("compile", "--gin_file=gin/experiments/markov_tiny.gin", "--topology=v5e-8", env=users_env())
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("train step"))
    assert "on v5e-8 (v5e:2x4, TPU v5 lite) (8 devices" in line and line.endswith("(fits)"), line
    assert not [x for x in result.stderr.splitlines() if any(c in x for c in TPU_CHATTER)], result.stderr
