"""One process of a 2-host run on 127.0.0.1: python multihost_job.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON.

Each process holds 4 CPU devices, builds only its own rows of the global batch and takes two sharded train
steps; the losses must equal a single-process run on 8 devices.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

import numpy as np  # noqa: E402

from synpro_jax import models, sharding  # noqa: E402
from synpro_jax.data.corpus import TokenizedCorpus  # noqa: E402
from synpro_jax.data.packing import PackedStream  # noqa: E402
from synpro_jax.data.pipeline import TrainBatches  # noqa: E402
from synpro_jax.train import OptimizerConfig, TrainStep  # noqa: E402

rng = np.random.default_rng(0)
docs = [rng.integers(2, 256, rng.integers(5, 50)) for _ in range(200)]
stream = PackedStream(TokenizedCorpus.from_token_lists(docs, [str(i) for i in range(200)]), 33, eos_id=1)
mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
step = TrainStep(models.get_preset("tiny"), mesh, OptimizerConfig(learning_rate=1e-3, warmup_steps=0))
batches = TrainBatches(stream, 16, step.batch_sharding)
state = step.init(jax.random.key(0))
losses = []
for s in range(2):
    batch, _ = batches(s)
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
info = {
    "process": jax.process_index(),
    "processes": jax.process_count(),
    "devices": jax.device_count(),
    "local_devices": jax.local_device_count(),
    "rows": [batches.shard.row_start, batches.shard.row_stop],
    "losses": losses,
}
with open(out, "w") as fh:
    json.dump(info, fh)
