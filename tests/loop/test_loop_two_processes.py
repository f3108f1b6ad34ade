"""`synpro loop` as two local processes x 1 CPU device (jax.distributed on 127.0.0.1), standing in for a
two-host slice: every stage (pretraining, evaluation, probe, GRPO, synthesis) runs, and each synthesis stage holds
every training document exactly once across the hosts' parts."""

import json
import os
from pathlib import Path
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_loop import stages  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_loop_runs_on_two_processes(workspace, tmp_path):
    from synpro_jax.distributed import host_of

    out = tmp_path / "loop"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"
    )
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # two processes compiling the same programs at once
    procs = []
    for i in range(2):
        cmd = [
            sys.executable,
            "-m",
            "synpro_jax.cli",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            "loop",
            f"--gin_file={workspace}",
            f"--gin.LOOP_DIR='{out}'",
            f"--gin.synpro.DataConfig.cache_dir='{tmp_path / 'cache'}'",
        ]
        with open(tmp_path / f"p{i}.log", "ab") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], (tmp_path / "p1.log").read_text(errors="replace")[-3000:]
    got = stages(out)
    assert len(got) == 15 and all(s["status"] == "done" for s in got.values())
    assert json.loads((out / "loop_summary.json").read_text())
    training = sorted((out / "r0" / "training_documents.txt").read_text().split())
    for key, stage in got.items():
        if "synthesize_" not in key:
            continue
        seen = []
        for i in range(2):  # each host wrote the documents the split gives it
            part = out / stage["outputs"]["dir"] / f"organic.host-{i}-of-2.jsonl"
            ids = [json.loads(line)["source_id"] for line in part.read_text().splitlines()]
            assert all(host_of(d, 2) == i for d in ids), key
            seen += ids
        assert sorted(seen) == training, key  # every training document exactly once
