"""Bulk jobs on two local processes x 4 CPU devices (jax.distributed on 127.0.0.1): synthesis and corpus
scoring, each host on its own share of the documents, killed on one host and resumed, end with every document
exactly once and the other host's finished work untouched."""

import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest
from test_two_processes import env, free_port, wait_all

pytestmark = pytest.mark.slow


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
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(BULK_JOB), kind, str(workspace), str(out), str(kill_after)],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=e,
                )
            )
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
    # Process 1 dies before its third write (documents leave its 2 decode slots as they end); process 0
    # finishes its part.
    kill_when(launch_bulk("synthesize", bulk_workspace, out, 2, tmp_path), tmp_path, "synthesize", part0.exists)
    kept1 = len((out / (part1.name + ".partial")).read_text().splitlines())
    assert not part1.exists() and 2 <= kept1 < sum(host_of(i, 2) == 1 for i in ids)
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
    assert {r["host"]: r.get("resumed") for r in manifest["shards"]} == {0: None, 1: kept1}  # host 0: skipped
    assert sorted(p.name for p in out.glob("*.partial")) == []


def test_corpus_scoring_killed_on_one_host_ends_with_every_document_once(bulk_workspace, tmp_path):
    from bulk_job import DOCUMENTS
    import numpy as np

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
    hosts = [{host_of(k, 2) for k in np.load(parts / name)["ids"].tolist()} for name in kept]
    assert {1} in hosts and {0} in hosts  # the killed host kept its first chunk: the rerun resumes it
    assert not (out / "scores" / "influence.npz").exists()
    assert wait_all(launch_bulk("probe", bulk_workspace, out, 0, tmp_path), tmp_path) == [0, 0]
    assert "reusing theta' from" in (tmp_path / "probe-p0.log").read_text()
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in parts.glob("part-*.npz")) if n in kept} == kept
    with np.load(out / "scores" / "influence.npz") as z:
        assert z["ids"].tolist() == ids  # every document exactly once, in corpus order
        np.testing.assert_allclose(z["influence"], z["loss_before"] - z["loss_after"], atol=1e-5)
    owners = [{host_of(k, 2) for k in np.load(p)["ids"].tolist()} for p in parts.glob("part-*.npz")]
    assert all(len(o) == 1 for o in owners)  # each part is one host's
