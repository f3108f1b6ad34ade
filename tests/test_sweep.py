"""`synpro sweep`: grid and zip axes over gin bindings, one run directory per point, skipped when done, a
summary table; a bad binding in any point fails before the first point runs."""

import csv
import io
import json
import os
from pathlib import Path
import shlex
import subprocess
import sys

from etils import epath
import pytest

from synpro_jax import sweep
from synpro_jax.cloud_tpu import babysit, gcloud

TINY = ["NUM_STEPS", "synpro.TrainerConfig.eval_every", "synpro.TrainerConfig.checkpoint_every"]


def test_grid_axes_cross_and_zip_groups_advance_together(tmp_path):
    axes = sweep.parse_sweep(
        """
# a comment
A = [1, 2]   # trailing comment
B = ['x,y', "z#"]
zip:
C = [[1, 2], [3]]
D = [@foo(), %BAR]
grid:
E = [
  0.1,
  0.2,
]
""",
        "s.sweep",
    )
    points = sweep.expand(axes)
    assert len(points) == 2 * 2 * 2 * 2
    assert points[0].bindings == (("A", "1"), ("B", "'x,y'"), ("C", "[1, 2]"), ("D", "@foo()"), ("E", "0.1"))
    assert points[-1].bindings == (("A", "2"), ("B", '"z#"'), ("C", "[3]"), ("D", "%BAR"), ("E", "0.2"))
    assert len({p.name for p in points}) == 16
    assert all("/" not in p.name and " " not in p.name for p in points)
    assert points[5].name == "05-A=1-B=z-C=1_2-D=foo-E=0.2"


@pytest.mark.parametrize(
    "text, match",
    [
        ("A = 1", r"s.sweep:1: a sweep axis is a list of values in \[...\]"),
        ("A = [1]\nA = [2]", r"s.sweep:2: A is swept twice \(first at s.sweep:1\)"),
        ("zip:\nA = [1, 2]\nB = [1]", "s.sweep: a zip group's lists must have one length: A has 2"),
        ("what is this", "s.sweep:1: expected 'BINDING = \\[values\\]'"),
        ("A = [1,, 2]", "s.sweep:1: empty value"),
        ("# nothing", "no axes"),
    ],
)
def test_sweep_file_mistakes_name_the_line(text, match):
    with pytest.raises(sweep.SweepError, match=match):
        sweep.parse_sweep(text, "s.sweep")


def run_cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", "sweep", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )


def tiny_args(tmp_path, sweep_text):
    path = tmp_path / "lr.sweep"
    path.write_text(sweep_text)
    return [
        "--gin_file=gin/experiments/markov_tiny.gin",
        f"--sweep={path}",
        f"--out={tmp_path / 'sweep'}",
        "--gin.synpro.TrainerConfig.eval_every=2",
        "--gin.synpro.TrainerConfig.checkpoint_every=100",
        "--gin.synpro.TrainerConfig.eval_batches=1",
        "--gin.WARMUP_STEPS=1",
        "--gin.synpro.preset.num_layers=1",
    ]


@pytest.mark.slow
def test_a_2x2_sweep_runs_skips_done_points_and_summarises(tmp_path):
    args = tiny_args(tmp_path, "LEARNING_RATE = [1e-3, 3e-3]\nNUM_STEPS = [2, 4]\n")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "sweep"
    manifest = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in manifest["points"]] == ["done"] * 4
    for p in manifest["points"]:
        point = out / p["name"]
        assert (point / "summary.json").exists() and (point / "config.gin").exists()
        assert f"NUM_STEPS = {p['bindings']['NUM_STEPS']}" in (point / "point.gin").read_text()
        assert json.loads((point / "summary.json").read_text())["step"] == int(p["bindings"]["NUM_STEPS"])

    # In this process from here on (a point would start a subprocess, so none may be left to run).
    job = sweep.Sweep(
        "train",
        ("gin/experiments/markov_tiny.gin",),
        args[1].split("=", 1)[1],
        str(out),
        tuple(a[len("--gin.") :] for a in args[3:]),
    )
    log = io.StringIO()
    job.run(stream=log)
    assert log.getvalue().count("done, skipping") == 4 and "starting" not in log.getvalue(), log.getvalue()

    sweep.summarize(str(out), stream=io.StringIO())
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4
    assert {(r["LEARNING_RATE"], r["NUM_STEPS"]) for r in rows} == {(a, b) for a in ("1e-3", "3e-3") for b in "24"}
    assert all(r["status"] == "done" and float(r["final_val_loss"]) > 0 for r in rows)
    assert (out / "summary.png").stat().st_size > 5_000

    # The same directory refuses another sweep instead of mixing points.
    (tmp_path / "other.sweep").write_text("LEARNING_RATE = [1e-3]\n")
    other = sweep.Sweep("train", ("gin/experiments/markov_tiny.gin",), str(tmp_path / "other.sweep"), str(out))
    with pytest.raises(sweep.SweepError, match="holds another sweep \\(its extra, axes differ\\)"):
        other.run(stream=io.StringIO())


@pytest.mark.parametrize(
    "text, match",
    [
        ("LEARNING_RATE = [1e-3, -1]", "LEARNING_RATE=-1.*OptimizerConfig.learning_rate=-1: must be positive"),
        ("synpro.TrainerConfig.eval_evry = [1, 2]", "eval_evry"),
    ],
)
def test_one_bad_point_fails_the_sweep_before_any_point_runs(tmp_path, text, match):
    result = run_cli(*tiny_args(tmp_path, text + "\n"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert __import__("re").search(match, result.stderr), result.stderr
    assert not (tmp_path / "sweep").exists()  # nothing ran, nothing written


def test_a_dry_run_runs_every_points_trainer_checks_before_any_point(tmp_path):
    """The tiny model has 512 positions: point 1's SEQ_LEN is refused up front, as its trainer would refuse it,
    naming the point and the knob; nothing is printed or written."""
    result = run_cli(*tiny_args(tmp_path, "SEQ_LEN = [128, 1024]\n"), "--dry_run", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "error: sweep point 1-SEQ_LEN=1024 (SEQ_LEN = 1024): TrainerConfig.seq_len=1024 "
        "exceeds ModelConfig.max_seq_len=512"
    ), result.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "bindings, match",
    [
        (
            ["synpro.GRPOConfig.max_completion_tokens = 1024"],
            r"GRPOConfig.max_prompt_tokens=512 \+ max_completion_tokens=1024 exceeds the generator's max_seq_len=1024",
        ),
        (
            ["PROMPTS_PER_STEP = 3"],
            ("= 24 completions per step must divide into accum_steps=1 micro-batches over the mesh's 16 data shards"),
        ),
        (["synpro.GRPORunConfig.logits_chunk = 96"], "GRPORunConfig.logits_chunk=96 must divide"),
    ],
)
def test_a_grpo_point_is_checked_as_its_trainer_checks(bindings, match):
    sweep.check_point("grpo", ["gin/experiments/cpu_grpo_rephrase.gin"], [], devices=16)  # the shipped one is fine
    with pytest.raises(ValueError, match=match):
        sweep.check_point("grpo", ["gin/experiments/cpu_grpo_rephrase.gin"], bindings, devices=16)


def test_slice_devices_are_the_chips_jax_sees():
    assert [sweep.slice_devices(t) for t in ("v5litepod-8", "v4-32", "v5p-8", "v6e-16", "v3-8")] == [8, 16, 4, 16, 8]


# --- --launcher=tpu: one slice per point, through the tpu/ scripts' functions; gcloud never runs ---

TINY_EXTRA = ("synpro.TrainerConfig.eval_every=2", "synpro.TrainerConfig.checkpoint_every=100", "WARMUP_STEPS=1")
TPU = dict(
    tpu_prefix="lr",
    zone="us-west4-a",
    accelerator_type="v5litepod-8",
    provisioning="spot",
    repo="https://github.com/o/synpro_jax.git",
    ref="v1",
)


@pytest.fixture
def bucket(gcs):
    return str(gcs.parent / "sweep")


def bucket_objects(gcs_emulator, bucket: str) -> list[str]:
    """Every object of the test's bucket, asked of the GCS emulator itself."""
    return gcs_emulator.objects(bucket[len("gs://") :].split("/")[0])


class Runner:
    """A fake gcloud runner: records every command; fails the `fail`-th call (1-based) once."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def __call__(self, argv, capture=False):
        self.calls.append(argv)
        return gcloud.Result(9 if len(self.calls) == self.fail else 0)


def tpu_sweep(tmp_path, out, text="LEARNING_RATE = [1e-3, 3e-3]\nNUM_STEPS = [2, 4]\n", gin_file=None):
    path = tmp_path / "lr.sweep"
    path.write_text(text)
    return sweep.Sweep("train", (gin_file or "gin/experiments/markov_tiny.gin",), str(path), out, TINY_EXTRA)


def point_commands(job, launcher, point):
    """What the point's slice gets, built here from the tpu/ scripts' functions (synpro_jax.cloud_tpu.gcloud)."""
    name = launcher.slice_name(point)
    argv = job.argv(point)  # the gin file is already relative to the checkout
    return [
        gcloud.create(name, "us-west4-a", None, "v5litepod-8", None, "spot"),
        *gcloud.install(name, "us-west4-a", None, TPU["repo"], "v1"),
        gcloud.launch(name, "us-west4-a", None, argv, name),
    ]


def test_tpu_dry_run_prints_every_points_slice_commands_and_runs_nothing(tmp_path, bucket, capsys, gcs_emulator):
    job, launcher, runner, log = tpu_sweep(tmp_path, bucket), sweep.TpuLauncher(**TPU), Runner(), io.StringIO()
    job.launch(launcher, dry_run=True, stream=log, runner=runner)
    assert runner.calls == [] and bucket_objects(gcs_emulator, bucket) == []  # nothing ran, nothing written
    lines = log.getvalue().splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    names = [launcher.slice_name(p) for p in job.points]
    assert names[0] == "lr-0-learning-rate-1e-3-num-steps-2" and len(set(names)) == 4
    assert commands == [shlex.join(c) for p in job.points for c in point_commands(job, launcher, p)]
    for point, name in zip(job.points, names):
        launch = commands[3 * point.index + 2]
        lr, steps = dict(point.bindings)["LEARNING_RATE"], dict(point.bindings)["NUM_STEPS"]
        assert f" {name} " in launch and f"--gin.LEARNING_RATE={lr} --gin.NUM_STEPS={steps}" in launch
        assert f'--gin.OUT_DIR="{bucket}/{point.name}"' in launch
        # The babysitter's command line it suggests relaunches exactly these commands.
        [line] = [ln for ln in lines if ln.startswith("#   babysit: ") and f" --name {name} " in ln]
        argv = shlex.split(line[len("#   babysit: ") :])
        assert argv[: len(sweep.BABYSIT)] == ["python", "-m", "synpro_jax.cloud_tpu.babysit"]
        assert babysit.main(["--dry_run", *argv[len(sweep.BABYSIT) :]], runner=runner) == 0
        assert capsys.readouterr().out.splitlines() == commands[3 * point.index : 3 * point.index + 3]
    assert runner.calls == []


def test_a_dry_run_without_access_to_out_still_prints_every_point(tmp_path, bucket, monkeypatch):
    def refuse(self, path, **kwargs):
        raise PermissionError("403 no credentials")

    import gcsfs

    monkeypatch.setattr(gcsfs.GCSFileSystem, "exists", refuse)
    job, log, runner = tpu_sweep(tmp_path, bucket), io.StringIO(), Runner()
    job.launch(sweep.TpuLauncher(**TPU), dry_run=True, stream=log, runner=runner)
    assert f"could not read {bucket}/sweep.json (403 no credentials)" in log.getvalue()
    assert len([line for line in log.getvalue().splitlines() if line.startswith("gcloud ")]) == 12
    with pytest.raises(PermissionError):  # a real launch needs the manifest
        job.launch(sweep.TpuLauncher(**TPU), stream=log, runner=runner)
    assert runner.calls == []


def test_tpu_launch_records_slices_and_skips_launched_and_finished_points_on_rerun(tmp_path, bucket):
    job, launcher, runner = tpu_sweep(tmp_path, bucket), sweep.TpuLauncher(**TPU), Runner()
    job.launch(launcher, stream=io.StringIO(), runner=runner)
    assert runner.calls == [c for p in job.points for c in point_commands(job, launcher, p)]
    manifest = json.loads(epath.Path(f"{bucket}/sweep.json").read_text())
    for point, entry in zip(job.points, manifest["points"]):
        assert entry["status"] == "launched" and entry["launcher"] == "tpu"
        assert entry["slice"] == launcher.slice_name(point) and entry["babysit"].startswith(
            "python -m synpro_jax.cloud_tpu.babysit --name " + entry["slice"]
        )
        assert (
            "LEARNING_RATE = " + entry["bindings"]["LEARNING_RATE"]
            in epath.Path(f"{bucket}/{point.name}/point.gin").read_text()
        )

    # Rerun: launched points are left to their slices; a finished one becomes done.
    epath.Path(f"{bucket}/{job.points[0].name}/summary.json").write_text('{"step": 2, "preempted": false}')
    epath.Path(f"{bucket}/{job.points[1].name}/summary.json").write_text('{"step": 1, "preempted": true}')
    log, again = io.StringIO(), Runner()
    manifest = job.launch(launcher, stream=log, runner=again)
    assert again.calls == []
    assert [p["status"] for p in manifest["points"]] == ["done", "launched", "launched", "launched"]
    assert json.loads(epath.Path(f"{bucket}/sweep.json").read_text()) == manifest
    assert log.getvalue().count("not done yet; skipping") == 3
    # A local rerun leaves them to their slices too (two runs would share a directory).
    log = io.StringIO()
    job.run(stream=log)
    assert log.getvalue().count("not done yet; skipping") == 3 and "starting" not in log.getvalue()


def test_a_failed_launch_stops_the_sweep_and_the_rerun_keeps_the_created_slice(tmp_path, bucket):
    job, launcher = tpu_sweep(tmp_path, bucket), sweep.TpuLauncher(**TPU)
    runner = Runner(fail=5)  # point 1's install (point 0: create, install, launch; point 1: create, install)
    log = io.StringIO()
    manifest = job.launch(launcher, stream=log, runner=runner)
    assert len(runner.calls) == 5 and "install or launch failed (exit 9)" in log.getvalue()
    assert [p["status"] for p in manifest["points"]] == ["launched", "launch_failed", "pending", "pending"]
    retry = Runner()
    job.launch(launcher, stream=io.StringIO(), runner=retry)
    assert retry.calls == [c for p in job.points[1:] for c in point_commands(job, launcher, p)][1:]  # no create
    assert [p["status"] for p in json.loads(epath.Path(f"{bucket}/sweep.json").read_text())["points"]] == [
        "launched"
    ] * 4


@pytest.mark.parametrize(
    "text, match",
    [
        ("LEARNING_RATE = [1e-3, -1]", "sweep point 1-LEARNING_RATE=-1 .*learning_rate=-1: must be positive"),
        ("synpro.TrainerConfig.eval_evry = [1, 2]", "sweep point 0-eval_evry=1 .*did you mean eval_every"),
        # a v5litepod-8's 8 chips split the batch 8 ways (this machine's devices do not count)
        (
            "GLOBAL_BATCH = [16, 12]",
            (
                "sweep point 1-GLOBAL_BATCH=12 .*TrainerConfig.global_batch=12 does not divide "
                "over the mesh's 8 data shards"
            ),
        ),
    ],
)
def test_tpu_mode_checks_every_point_before_any_command(tmp_path, bucket, text, match, gcs_emulator):
    runner, log = Runner(), io.StringIO()  # point 0 of the first is fine, and still nothing is printed
    with pytest.raises(sweep.SweepError, match=match):
        tpu_sweep(tmp_path, bucket, text + "\n").launch(
            sweep.TpuLauncher(**TPU), dry_run=True, stream=log, runner=runner
        )
    assert runner.calls == [] and log.getvalue() == "" and bucket_objects(gcs_emulator, bucket) == []


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(zone=None), "needs --zone"),
        (dict(tpu_prefix=None), "needs --tpu_prefix"),
        (dict(accelerator_type=None), "needs --accelerator_type"),
        (dict(tpu_prefix="LR"), "--tpu_prefix: 'LR'"),
        (dict(tpu_prefix="a" * 62), "--tpu_prefix: .* at most 61 characters"),
        (dict(accelerator_type="v5e-8"), "--accelerator_type: 'v5e-8' .*v5litepod"),
        (dict(repo=None, ref=None), "--repo: say where the workers get synpro_jax"),
        (dict(scp_from="no/such/dir", repo=None, ref=None), "--scp_from"),
        (dict(out="runs/local"), "--out=runs/local: the out directory must be one that every worker"),
    ],
)
def test_tpu_mode_flag_errors_name_the_flag(tmp_path, bucket, change, match):
    change = dict(change)
    job, runner = tpu_sweep(tmp_path, change.pop("out", bucket)), Runner()
    with pytest.raises(sweep.SweepError, match=match):
        job.launch(sweep.TpuLauncher(**{**TPU, **change}), dry_run=True, stream=io.StringIO(), runner=runner)
    assert runner.calls == []


def test_tpu_mode_refuses_a_gin_file_the_workers_lack(tmp_path, bucket):
    (tmp_path / "mine.gin").write_text("include 'gin/experiments/markov_tiny.gin'\n")
    job = tpu_sweep(tmp_path, bucket, gin_file=str(tmp_path / "mine.gin"))
    with pytest.raises(sweep.SweepError, match="--gin_file: .*mine.gin is outside .*the working directory"):
        job.launch(sweep.TpuLauncher(**TPU), dry_run=True, stream=io.StringIO(), runner=Runner())


def test_the_workers_get_shipped_gin_files_by_name_and_others_relative_to_their_checkout(tmp_path, monkeypatch):
    """A gin file synpro_jax ships is gin/... on the workers (in their checkout and their package) from whichever
    directory the sweep runs; any other file is named relative to --scp_from's directory, or with --repo to the
    working directory, which the workers' checkout is taken to mirror; outside both it is refused."""
    from synpro_jax import configs

    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    (checkout / "exp").mkdir(parents=True)
    elsewhere.mkdir()
    (checkout / "exp" / "mine.gin").write_text("include 'gin/experiments/markov_tiny.gin'\n")
    (elsewhere / "other.gin").write_text("include 'gin/experiments/markov_tiny.gin'\n")
    shipped = Path(str(configs.gin_search_root()), "gin/experiments/markov_tiny.gin")
    monkeypatch.chdir(elsewhere)

    copied = sweep.workers_root(sweep.TpuLauncher(**{**TPU, "repo": None, "ref": None, "scp_from": str(checkout)}))
    assert copied == (checkout.resolve(), "--scp_from, copied to the workers as it is")
    assert sweep.for_workers(shipped, "--gin_file", copied) == "gin/experiments/markov_tiny.gin"
    assert sweep.for_workers(checkout / "exp" / "mine.gin", "--gin_file", copied) == "exp/mine.gin"
    assert sweep.for_workers(checkout / "exp", "--gin_search_paths", copied) == "exp"
    with pytest.raises(sweep.SweepError, match="--gin_file: .*other.gin is outside .*checkout \\(--scp_from"):
        sweep.for_workers(elsewhere / "other.gin", "--gin_file", copied)

    cloned = sweep.workers_root(sweep.TpuLauncher(**TPU))
    assert cloned == (elsewhere.resolve(), "the working directory, taken to be a checkout of --repo")
    assert sweep.for_workers(shipped, "--gin_file", cloned) == "gin/experiments/markov_tiny.gin"
    assert sweep.for_workers(elsewhere / "other.gin", "--gin_file", cloned) == "other.gin"
    with pytest.raises(sweep.SweepError, match="mine.gin is outside .*elsewhere \\(the working directory"):
        sweep.for_workers(checkout / "exp" / "mine.gin", "--gin_file", cloned)


def test_a_tpu_sweep_from_another_directory_names_the_shipped_gin_file_as_the_workers_see_it(
    tmp_path, bucket, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no gin/ here: the experiment is found among the files synpro_jax ships
    job, log = tpu_sweep(tmp_path, bucket), io.StringIO()
    job.launch(sweep.TpuLauncher(**TPU), dry_run=True, stream=log, runner=Runner())
    launches = [line for line in log.getvalue().splitlines() if " ssh " in line and "synpro train" in line]
    assert len(launches) == 4 and all("--gin_file=gin/experiments/markov_tiny.gin " in line for line in launches)


def test_sweep_and_its_tpu_launcher_import_only_the_installed_package():
    """Nothing from the checkout's tpu/ folder or any other path outside synpro_jax: what `synpro sweep
    --launcher=tpu` needs is in a regular (non-editable) install too (tests/test_cli.py builds one)."""
    check = (
        "import sys\n"
        "from synpro_jax import sweep\n"
        "sweep.TpuLauncher(tpu_prefix='p', zone='z', accelerator_type='v4-8', repo='r').check(sweep.expand(\n"
        "    sweep.parse_sweep('A = [1]')))\n"
        "print('\\n'.join(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))\n"
    )
    repo = Path(sweep.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", check], cwd="/", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    files = {Path(f).resolve() for f in done.stdout.split("\n") if f}
    ours = [f for f in files if f.is_relative_to(repo)]
    assert ours and all(f.is_relative_to(repo / "synpro_jax") for f in ours), sorted(map(str, ours))
    assert repo / "synpro_jax" / "cloud_tpu" / "gcloud.py" in ours


@pytest.mark.parametrize(
    "args, message",
    [
        (["--launcher=tpu", "--tpu_prefix=lr", "--accelerator_type=v4-8", "--repo=r"], "needs --zone ("),
        (["--zone=z"], "synpro sweep --zone: applies to --launcher=tpu"),
    ],
)
def test_cli_tpu_flag_errors(tmp_path, args, message):
    result = run_cli(*tiny_args(tmp_path, "LEARNING_RATE = [1e-3]\n"), *args, "--dry_run", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
