"""Two local processes x 4 CPU devices, joined by jax.distributed on 127.0.0.1, stand in for a two-host slice:
the CLI's multi-host runtime, sharded pretraining equal to one 8-device process, and SIGTERM on one host."""

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

TRAIN = [
    "train",
    "--gin_file=gin/experiments/markov_tiny.gin",
    "--gin.synpro.TrainerConfig.checkpoint_every=3",
    "--gin.synpro.TrainerConfig.eval_every=3",
    "--gin.synpro.TrainerConfig.log_every=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int) -> dict:
    e = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    e.pop("JAX_COMPILATION_CACHE_DIR", None)  # one cache for processes that compile the same programs at once
    return e


def launch(args: list[str], logs: Path, processes: int = 2) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for i in range(processes):
        cmd = [
            sys.executable,
            "-m",
            "synpro_jax.cli",
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={processes}",
            f"--process_id={i}",
            *args,
        ]
        with open(logs / f"p{i}.log", "ab") as fh:
            procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env(4)))
    return procs


def wait_all(procs, logs: Path, timeout: float = 600) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for i, p in enumerate(procs):
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"process {i} hung:\n" + (logs / f"p{i}.log").read_text(errors="replace")[-3000:])
    return codes


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_process_with_eight_devices(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    steps = ["--gin.NUM_STEPS=6"]
    ref = subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", *TRAIN, *steps, f'--gin.OUT_DIR="{one}"'],
        capture_output=True,
        text=True,
        env=env(8),
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    procs = launch([*TRAIN, *steps, f'--gin.OUT_DIR="{two}"'], tmp_path)
    assert wait_all(procs, tmp_path) == [0, 0], (tmp_path / "p0.log").read_text(errors="replace")[-3000:]
    a, b = records(one), records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        for key in ("loss", "grad_norm", "val_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], abs=1e-5), (ra["step"], key)
    assert "process 1 of 2, 4 local of 8 devices" in (tmp_path / "p1.log").read_text()
    for i in range(2):  # orbax's async checkpointer needs jax.distributed on every host
        assert (
            f"orbax async checkpointer on {two / 'checkpoints'} (process {i} of 2)"
            in (tmp_path / f"p{i}.log").read_text()
        )
    assert {"3", "6"} <= {p.name for p in (two / "checkpoints").iterdir()}


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    out = tmp_path / "run"
    procs = launch(
        [
            *TRAIN,
            "--gin.NUM_STEPS=100000",
            f'--gin.OUT_DIR="{out}"',
            "--gin.synpro.TrainerConfig.checkpoint_every=100000",
        ],
        tmp_path,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").exists() and len(records(out)) >= 5):
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # one host is preempted; the other never sees a signal
    assert wait_all(procs, tmp_path) == [143, 143]
    steps = []
    for i in range(2):
        text = (tmp_path / f"p{i}.log").read_text(errors="replace")
        summary = json.loads(text[text.rindex("\n{") + 1 : text.rindex("}") + 1])
        assert summary["preempted"] is True
        steps.append(summary["step"])
    assert steps[0] == steps[1] > 0
    saved = [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(saved) == steps[0]  # the step both hosts stopped after is the latest checkpoint


def test_hosts_launched_with_different_run_directories_refuse_to_start(tmp_path):
    port = free_port()
    procs = []
    for i in range(2):
        cmd = [
            sys.executable,
            "-m",
            "synpro_jax.cli",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            *TRAIN,
            "--gin.NUM_STEPS=2",
            f'--gin.OUT_DIR="{tmp_path / f"run{i}"}"',
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(4)))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outputs[0][-2000:]
    assert all("hosts disagree on the run directory (synpro.TrainerConfig.out_dir)" in o for o in outputs)
    assert not (tmp_path / "run0" / "checkpoints").exists()
