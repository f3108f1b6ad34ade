"""Two local processes joined by jax.distributed stand in for a 2-host pod: per-host batch rows assembled into
global arrays give the same losses as one process with all 8 devices."""

import json
import os
from pathlib import Path
import socket
import subprocess
import sys

import pytest

JOB = Path(__file__).with_name("multihost_job.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, env_devices):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={env_devices}"}
    return subprocess.Popen(
        [sys.executable, str(JOB), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_hosts_match_one(tmp_path):
    port = free_port()
    procs = [run([i, 2, port, tmp_path / f"host{i}.json"], 4) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    hosts = [json.loads((tmp_path / f"host{i}.json").read_text()) for i in range(2)]
    assert [h["devices"] for h in hosts] == [8, 8] and [h["local_devices"] for h in hosts] == [4, 4]
    assert hosts[0]["rows"] == [0, 8] and hosts[1]["rows"] == [8, 16]  # each host built only its half

    env = {**os.environ}
    single = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import os, sys; os.environ['XLA_FLAGS']='--xla_force_host_platform_device_count=8';"
                f"sys.argv=['x','0','1','0','{tmp_path / 'single.json'}'];"
                f"exec(open('{JOB}').read().replace('device_count=4', 'device_count=8'))"
            ),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((tmp_path / "single.json").read_text())
    assert one["devices"] == 8
    for h in hosts:
        assert h["losses"] == pytest.approx(one["losses"], abs=1e-6)
