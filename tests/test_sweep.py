"""`synpro sweep`: grid and zip axes over gin bindings, one run directory per point, skipped when done, a
summary table; a bad binding in any point fails before the first point runs."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from synpro_jax import sweep

TINY = ["NUM_STEPS", "synpro.TrainerConfig.eval_every", "synpro.TrainerConfig.checkpoint_every"]


def test_grid_axes_cross_and_zip_groups_advance_together(tmp_path):
    axes = sweep.parse_sweep("""
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
""", "s.sweep")
    points = sweep.expand(axes)
    assert len(points) == 2 * 2 * 2 * 2
    assert points[0].bindings == (("A", "1"), ("B", "'x,y'"), ("C", "[1, 2]"), ("D", "@foo()"), ("E", "0.1"))
    assert points[-1].bindings == (("A", "2"), ("B", '"z#"'), ("C", "[3]"), ("D", "%BAR"), ("E", "0.2"))
    assert len({p.name for p in points}) == 16
    assert all("/" not in p.name and " " not in p.name for p in points)
    assert points[5].name == "05-A=1-B=z-C=1_2-D=foo-E=0.2"


@pytest.mark.parametrize("text, match", [
    ("A = 1", r"s.sweep:1: a sweep axis is a list of values in \[...\]"),
    ("A = [1]\nA = [2]", r"s.sweep:2: A is swept twice \(first at s.sweep:1\)"),
    ("zip:\nA = [1, 2]\nB = [1]", "s.sweep: a zip group's lists must have one length: A has 2"),
    ("what is this", "s.sweep:1: expected 'BINDING = \\[values\\]'"),
    ("A = [1,, 2]", "s.sweep:1: empty value"),
    ("# nothing", "no axes"),
])
def test_sweep_file_mistakes_name_the_line(text, match):
    with pytest.raises(sweep.SweepError, match=match):
        sweep.parse_sweep(text, "s.sweep")


def run_cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "synpro_jax.cli", "sweep", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def tiny_args(tmp_path, sweep_text):
    path = tmp_path / "lr.sweep"
    path.write_text(sweep_text)
    return ["--gin_file=gin/experiments/markov_tiny.gin", f"--sweep={path}", f"--out={tmp_path / 'sweep'}",
            "--gin.synpro.TrainerConfig.eval_every=2", "--gin.synpro.TrainerConfig.checkpoint_every=100",
            "--gin.synpro.TrainerConfig.eval_batches=1", "--gin.WARMUP_STEPS=1", "--gin.synpro.preset.num_layers=1"]


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
    job = sweep.Sweep("train", ("gin/experiments/markov_tiny.gin",), args[1].split("=", 1)[1], str(out),
                      tuple(a[len("--gin."):] for a in args[3:]))
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


@pytest.mark.parametrize("text, match", [
    ("LEARNING_RATE = [1e-3, -1]", "LEARNING_RATE=-1.*OptimizerConfig.learning_rate=-1: must be positive"),
    ("synpro.TrainerConfig.eval_evry = [1, 2]", "eval_evry"),
])
def test_one_bad_point_fails_the_sweep_before_any_point_runs(tmp_path, text, match):
    result = run_cli(*tiny_args(tmp_path, text + "\n"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert __import__("re").search(match, result.stderr), result.stderr
    assert not (tmp_path / "sweep").exists()  # nothing ran, nothing written
