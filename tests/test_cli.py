"""The `synpro` command line, run as a real subprocess as a user would."""

from importlib.metadata import version
import json
import os
from pathlib import Path
import shlex
import subprocess
import sys
import zipfile

import pytest

import synpro_jax
from synpro_jax import cli, errors

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
def test_a_wheel_ships_the_gin_files_and_the_tpu_launcher(tmp_path):
    """A regular (non-editable) install carries gin/ as synpro_jax/gin, and includes resolve inside it; it carries
    what `synpro sweep --launcher=tpu` launches slices with (synpro_jax.cloud_tpu), which needs nothing of the
    checkout: a dry run from the installed copy plans every slice, and its babysitter runs there."""
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
        "synpro_jax/errors.py",
        *(f"synpro_jax/cloud_tpu/{m}.py" for m in ("__init__", "gcloud", "babysit", "create", "install", "launch")),
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

    plan = (
        "import io, sys\n"
        "from synpro_jax import sweep\n"
        "def unreadable(self):\n"
        "    raise PermissionError('no bucket here')\n"
        "sweep.Sweep.load_manifest = unreadable\n"
        "open('lr.sweep', 'w').write('LEARNING_RATE = [1e-3, 3e-3]\\n')\n"
        "job = sweep.Sweep('train', ('gin/experiments/markov_tiny.gin',), 'lr.sweep', 'gs://b/lr')\n"
        "tpu = sweep.TpuLauncher(tpu_prefix='lr', zone='z', accelerator_type='v5litepod-8', repo='r', ref='v1')\n"
        "job.launch(tpu, dry_run=True, stream=sys.stdout)\n"
        "print('FILES', *[getattr(m, '__file__', None) or '' for m in list(sys.modules.values())])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", plan],
        cwd=tmp_path / "cwd",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len([line for line in lines if line.startswith("gcloud compute tpus tpu-vm create lr-")]) == 2
    babysits = [line for line in lines if line.startswith("#   babysit: python -m synpro_jax.cloud_tpu.babysit ")]
    assert len(babysits) == 2 and all("--gin_file=gin/experiments/markov_tiny.gin " in line for line in babysits)
    loaded = [Path(f) for f in lines[-1].split()[1:]]
    assert not [f for f in loaded if f.is_relative_to(REPO)] and Path(site, "synpro_jax", "sweep.py") in loaded
    argv = shlex.split(babysits[0][len("#   babysit: ") :])
    sitter = subprocess.run(  # the line it prints runs where synpro_jax is installed, with the standard library
        [sys.executable, "-S", *argv[1:3], "--dry_run", *argv[3:]],
        cwd=tmp_path / "cwd",
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(site)},
        timeout=60,
    )
    assert sitter.returncode == 0 and sitter.stdout.startswith("gcloud compute tpus tpu-vm create lr-0"), sitter


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
    assert changed.returncode == 2, changed.stderr[-3000:]  # a user error (ConfigError): one line, not a traceback
    assert changed.stderr.splitlines()[-1].endswith(
        "checkpoints was made with other settings (model.mlp_dim: 128 then, 64 now); use a new out_dir"
    )
    assert "Traceback" not in changed.stderr


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


# --- user errors are one line (exit 2); anything else is a bug, with its traceback (exit 1) ---

# A job whose trainer raises `error` once it runs: the configuration was read and built without a fault.
BROKEN_JOB = """import sys
from synpro_jax import cli
from synpro_jax.train import trainer

def run(self, on_start=None):
    raise {error}

trainer.Trainer.run = run
sys.exit(cli.main(sys.argv[1:]))
"""
TINY_TRAIN = ["--gin.NUM_STEPS=2", "--gin.synpro.preset.num_layers=1", "--gin.synpro.TrainerConfig.eval_batches=1"]


def test_a_bug_in_a_job_prints_its_traceback_and_exits_1(tmp_path):
    """A KeyError inside pretraining once printed `error: step` and exited 2, as if the user's config were wrong
    (and a babysitter would give up on the run): it is a bug, and the traceback says where."""
    script = tmp_path / "broken_job.py"
    script.write_text(BROKEN_JOB.format(error="KeyError('step')"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, str(script), "train", *TINY_TRAIN],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback (most recent call last)" in out.stderr and "raise KeyError('step')" in out.stderr
    assert "KeyError: 'step'" in out.stderr and "error: step" not in out.stderr


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--gin.LEARNING_RATE=-1"], "error: OptimizerConfig.learning_rate=-1: must be positive"),  # a config's check
        (["--gin_file=gin/models/tiny.gin"], "error: synpro.pretrain.optimizer is not bound: set it"),  # building
        (["--gin.NUM_STEPS=2", "--gin.synpro.preset.nmu_layers=1"], "did you mean num_layers"),  # parsing
    ],
)
def test_a_bad_config_is_still_one_line_and_exit_2(tmp_path, flags, says):
    out = synpro("train", *flags, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and says in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "error, code",
    [
        (KeyError("step"), None),  # None: main raises it, and Python prints the traceback and exits 1
        (ValueError("operands could not be broadcast together"), None),
        (TypeError("unsupported operand type(s)"), None),
        (errors.ConfigError("TrainerConfig.out_dir=x holds another run; use a new out_dir"), 2),
        (FileNotFoundError(2, "No such file or directory", "data/corpus.jsonl"), 2),
    ],
)
def test_what_a_running_job_raises_is_a_bug_unless_it_is_the_users(tmp_path, monkeypatch, capsys, error, code):
    from synpro_jax.train import trainer

    def run(self, on_start=None):
        raise error

    monkeypatch.setattr(trainer.Trainer, "run", run)
    monkeypatch.chdir(tmp_path)
    argv = ["train", *TINY_TRAIN]
    if code is None:
        with pytest.raises(type(error)) as raised:
            cli.main(argv)
        assert raised.value is error
    else:
        assert cli.main(argv) == code
        assert capsys.readouterr().err.splitlines()[-1] == f"error: {errors.one_line(error)}"  # after the progress


def test_errors_raised_while_the_configuration_is_built_are_the_users():
    """gin's own errors, and whatever a config raises while configs builds a job from the bindings, whatever its
    type; the message without gin's "In call to configurable" and caret lines."""
    from synpro_jax import configs

    configs.parse(["gin/experiments/markov_tiny.gin"], ["synpro.preset.name='huge'"])
    with pytest.raises(KeyError) as unknown:
        configs.build("pretrain")
    assert errors.is_user_error(unknown.value) and errors.from_configuration(unknown.value)
    assert errors.one_line(unknown.value).startswith("unknown model preset 'huge'; choose one of ['cpu_medium'")
    assert "In call to configurable" in str(unknown.value)

    def job_code():
        raise KeyError("step")

    with pytest.raises(KeyError) as bug:
        job_code()
    assert not errors.is_user_error(bug.value) and errors.one_line(bug.value) == "step"


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
