"""Kill a real training process (SIGKILL at a random step, SIGTERM like a TPU preemption) and resume it: the
loss sequence and the final parameters must equal an uninterrupted run's, bit for bit, on CPU."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

JOB = Path(__file__).with_name("resume_job.py")
STEPS = 30


def start(out_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, str(JOB), str(out_dir), str(STEPS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def logged_steps(out_dir: Path) -> int:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def wait_for_step(proc, out_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while logged_steps(out_dir) < step:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the job did not reach the step in time"
        time.sleep(0.05)


def finish(proc) -> int:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def losses(out_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), "a step was logged twice or out of order"
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    code, log = finish(start(out))
    assert code == 0, log[-3000:]
    return out


def assert_same_run(a: Path, b: Path):
    la, lb = losses(a), losses(b)
    assert list(la) == list(range(1, STEPS + 1)) and la == lb  # exact float equality
    pa, pb = np.load(a / "final_params.npz"), np.load(b / "final_params.npz")
    assert sorted(pa.files) == sorted(pb.files)
    for key in pa.files:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume(uninterrupted, tmp_path):
    kill_at = int(np.random.default_rng(int(time.time())).integers(4, STEPS - 3))
    proc = start(tmp_path)
    wait_for_step(proc, tmp_path, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert logged_steps(tmp_path) < STEPS
    code, log = finish(start(tmp_path))
    assert code == 0, log[-3000:]
    assert_same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_sigterm_saves_then_resumes(uninterrupted, tmp_path):
    proc = start(tmp_path)
    wait_for_step(proc, tmp_path, 7)
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc)
    assert code == 143, log[-3000:]
    stopped_at = logged_steps(tmp_path)
    assert stopped_at < STEPS
    assert str(stopped_at) in os.listdir(tmp_path / "checkpoints")  # saved at the step it stopped
    code, log = finish(start(tmp_path))
    assert code == 0, log[-3000:]
    assert_same_run(uninterrupted, tmp_path)
