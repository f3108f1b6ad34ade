"""`synpro compile`: the pretraining step compiled ahead of time, with its memory per device (XLA:CPU here;
XLA:TPU through libtpu where it is installed)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from synpro_jax import compile as aot
from synpro_jax import models
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig


def report(**knobs):
    accum = knobs.pop("accum_steps", 1)
    cfg = models.get_preset("tiny").replace(vocab_size=8192, **knobs)
    return aot.train_step_memory(cfg, MeshConfig(2, 2, 2), OptimizerConfig(), 16, 256, 1e-5, accum, "cpu")


def test_the_memory_report_sees_what_the_knobs_save():
    dense = report()
    assert dense.devices == 8 and dense.mesh == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dense.argument_bytes > 0 and dense.temp_bytes > 0 and dense.fits is None  # no HBM size for a CPU
    assert dense.total_bytes == (dense.argument_bytes + dense.output_bytes - dense.alias_bytes + dense.temp_bytes
                                 + dense.code_bytes)
    # The logits dominate here (8192 vocabulary): the chunked loss and micro-batches shrink the temporaries.
    assert report(loss_chunk=32).temp_bytes < dense.temp_bytes
    assert report(accum_steps=4).temp_bytes < dense.temp_bytes
    assert "train step (tiny, batch 16 x 256" in dense.line() and "per device arguments" in dense.line()


def test_an_unknown_topology_is_named():
    with pytest.raises(ValueError, match="--topology='v9-8'"):
        aot.topology_devices("v9-8")


def test_the_cli_reports_and_writes_json(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = tmp_path / "mem.json"
    result = subprocess.run([sys.executable, "-m", "synpro_jax.cli", "compile",
                             "--gin_file=gin/experiments/markov_tiny.gin", "--topology=cpu", f"--json={out}"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "per device arguments" in result.stdout and out.exists()


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install libtpu)")
def test_xla_tpu_compiles_for_a_v5e_8_without_a_tpu():
    cfg = models.get_preset("tiny").replace(dtype="bfloat16")
    r = aot.train_step_memory(cfg, MeshConfig(1, -1, 1), OptimizerConfig(), 16, 256, 1e-5, 1, "v5e-8")
    assert r.devices == 8 and r.hbm_bytes == 16 * 2**30 and r.fits
