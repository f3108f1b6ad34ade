"""Two local processes x 4 CPU devices, joined by jax.distributed on 127.0.0.1, stand in for a two-host slice:
the CLI's multi-host runtime, sharded pretraining equal to one 8-device process, and SIGTERM on one host."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRAIN = ["train", "--gin_file=gin/experiments/markov_tiny.gin", "--gin.synpro.TrainerConfig.checkpoint_every=3",
         "--gin.synpro.TrainerConfig.eval_every=3", "--gin.synpro.TrainerConfig.log_every=1"]


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
        cmd = [sys.executable, "-m", "synpro_jax.cli", f"--coordinator_address=127.0.0.1:{port}",
               f"--num_processes={processes}", f"--process_id={i}", *args]
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
    ref = subprocess.run([sys.executable, "-m", "synpro_jax.cli", *TRAIN, *steps, f'--gin.OUT_DIR="{one}"'],
                         capture_output=True, text=True, env=env(8), timeout=600)
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
    assert {"3", "6"} <= {p.name for p in (two / "checkpoints").iterdir()}


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    out = tmp_path / "run"
    procs = launch([*TRAIN, "--gin.NUM_STEPS=100000", f'--gin.OUT_DIR="{out}"',
                    "--gin.synpro.TrainerConfig.checkpoint_every=100000"], tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").exists() and len(records(out)) >= 5):
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # one host is preempted; the other never sees a signal
    assert wait_all(procs, tmp_path) == [143, 143]
    steps = []
    for i in range(2):
        text = (tmp_path / f"p{i}.log").read_text(errors="replace")
        summary = json.loads(text[text.rindex("\n{") + 1:text.rindex("}") + 1])
        assert summary["preempted"] is True
        steps.append(summary["step"])
    assert steps[0] == steps[1] > 0
    saved = [int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(saved) == steps[0]  # the step both hosts stopped after is the latest checkpoint


def test_hosts_launched_with_different_run_directories_refuse_to_start(tmp_path):
    port = free_port()
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "synpro_jax.cli", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={i}", *TRAIN, "--gin.NUM_STEPS=2", f'--gin.OUT_DIR="{tmp_path / f"run{i}"}"']
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(4)))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outputs[0][-2000:]
    assert all("hosts disagree on the run directory (synpro.TrainerConfig.out_dir)" in o for o in outputs)
    assert not (tmp_path / "run0" / "checkpoints").exists()


# --- bulk jobs: each host its own share of the documents, killed on one host and resumed -------------------------

BULK_JOB = Path(__file__).resolve().parent / "bulk_job.py"


@pytest.fixture(scope="module")
def bulk_workspace(tmp_path_factory):
    from bulk_job import make_workspace

    return make_workspace(tmp_path_factory.mktemp("bulk") / "ws")


def launch_bulk(kind: str, workspace: Path, out: Path, kill_after: int, logs: Path) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for i in range(2):
        e = dict(env(4), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        with open(logs / f"{kind}-p{i}.log", "ab") as fh:
            procs.append(subprocess.Popen([sys.executable, str(BULK_JOB), kind, str(workspace), str(out),
                                           str(kill_after)], stdout=fh, stderr=subprocess.STDOUT, env=e))
    return procs


def kill_when(procs, logs: Path, kind: str, done, timeout: float = 600) -> None:
    """Process 1 kills itself mid-job; process 0 finishes its own share (``done``), then waits at the job's last
    barrier for a peer that is gone, and is stopped here, as a pod's remaining hosts would be."""
    try:
        assert procs[1].wait(timeout=timeout) == -signal.SIGKILL
        deadline = time.monotonic() + timeout
        while not done() and procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done(), (logs / f"{kind}-p0.log").read_text(errors="replace")[-3000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_synthesis_killed_on_one_host_ends_with_every_document_once(bulk_workspace, tmp_path):
    from bulk_job import DOCUMENTS

    from synpro_jax.distributed import host_of

    out = tmp_path / "synthesis"
    ids = [f"organic.jsonl:{i}" for i in range(1, DOCUMENTS + 1)]
    part0, part1 = out / "organic.host-0-of-2.jsonl", out / "organic.host-1-of-2.jsonl"
    # Process 1 dies before writing its third 2-document batch; process 0 finishes its part.
    kill_when(launch_bulk("synthesize", bulk_workspace, out, 2, tmp_path), tmp_path, "synthesize", part0.exists)
    assert not part1.exists() and len((out / (part1.name + ".partial")).read_text().splitlines()) == 4
    kept = part0.stat().st_mtime_ns, part0.read_bytes()
    assert wait_all(launch_bulk("synthesize", bulk_workspace, out, 0, tmp_path), tmp_path) == [0, 0]
    assert (part0.stat().st_mtime_ns, part0.read_bytes()) == kept  # finished work is never redone
    written = {}
    for i, part in enumerate((part0, part1)):
        for line in part.read_text().splitlines():
            doc = json.loads(line)["source_id"]
            assert doc not in written and host_of(doc, 2) == i
            written[doc] = i
    assert sorted(written) == sorted(ids)  # every document exactly once
    manifest = json.loads((out / "synthesis.json").read_text())
    assert manifest["processes"] == 2
    assert {r["host"]: r.get("resumed") for r in manifest["shards"]} == {0: None, 1: 4}  # host 0: skipped
    assert sorted(p.name for p in out.glob("*.partial")) == []


def test_corpus_scoring_killed_on_one_host_ends_with_every_document_once(bulk_workspace, tmp_path):
    import numpy as np
    from bulk_job import DOCUMENTS

    from synpro_jax.distributed import host_of

    out = tmp_path / "probe"
    ids = [f"organic.jsonl:{i}" for i in range(1, DOCUMENTS + 1)]
    mine = sum(host_of(k, 2) == 0 for k in ids)
    parts = out / "scores" / "parts"

    def host0_done() -> bool:
        scored = [k for p in parts.glob("part-*.npz") for k in np.load(p)["ids"].tolist()] if parts.is_dir() else []
        return sum(host_of(k, 2) == 0 for k in scored) == mine

    # Chunks of 3 documents: process 1 dies before its second chunk; process 0 scores all of its own.
    kill_when(launch_bulk("probe", bulk_workspace, out, 1, tmp_path), tmp_path, "probe", host0_done)
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.npz")}
    assert not (out / "scores" / "influence.npz").exists()
    assert wait_all(launch_bulk("probe", bulk_workspace, out, 0, tmp_path), tmp_path) == [0, 0]
    assert "reusing theta' from" in (tmp_path / "probe-p0.log").read_text()
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in parts.glob("part-*.npz")) if n in kept} == kept
    with np.load(out / "scores" / "influence.npz") as z:
        assert z["ids"].tolist() == ids  # every document exactly once, in corpus order
        np.testing.assert_allclose(z["influence"], z["loss_before"] - z["loss_after"], atol=1e-5)
    owners = [{host_of(k, 2) for k in np.load(p)["ids"].tolist()} for p in parts.glob("part-*.npz")]
    assert all(len(o) == 1 for o in owners)  # each part is one host's
