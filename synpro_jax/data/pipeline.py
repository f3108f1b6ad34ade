"""Global training batches from a row stream, built per host and assembled into sharded jax.Arrays.

Step ``s`` uses global rows ``[s * B, (s + 1) * B)``. Each process builds only the rows its devices hold (read
off the batch sharding) and hands them to ``jax.make_array_from_process_local_data``, so a pod never moves
input data between hosts, and the data position is the step number alone.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import NamedSharding

from synpro_jax.data.packing import MixedStream, PackedStream, Rows


@dataclasses.dataclass
class ShardInfo:
    """This process's share of the global batch (the role of ``seqio.ShardInfo``, read off the sharding)."""

    index: int
    num_shards: int
    row_start: int  # first global batch row this process holds
    row_stop: int


def host_rows(sharding: NamedSharding, global_batch: int, row_len: int) -> ShardInfo:
    """The contiguous block of batch rows that this process's devices hold."""
    index_map = sharding.addressable_devices_indices_map((global_batch, row_len))
    starts, stops = set(), set()
    for idx in index_map.values():
        rows = idx[0]
        starts.add(rows.start or 0)
        stops.add(global_batch if rows.stop is None else rows.stop)
    lo, hi = min(starts), max(stops)
    covered = np.zeros(hi - lo, bool)
    for idx in index_map.values():
        covered[(idx[0].start or 0) - lo:(global_batch if idx[0].stop is None else idx[0].stop) - lo] = True
    if not covered.all():
        raise ValueError("this process's devices hold a non-contiguous set of batch rows; order the mesh's devices "
                         "by process (jax.make_mesh does)")
    return ShardInfo(jax.process_index(), jax.process_count(), lo, hi)


def seqio_shard_info():
    """``seqio.ShardInfo`` of this process, for reading a seqio dataset per host (one shard per process)."""
    import seqio

    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


class TrainBatches:
    """Batches for training step ``s`` from a packed or mixed stream, as sharded global arrays."""

    def __init__(self, stream: PackedStream | MixedStream, global_batch: int, sharding: NamedSharding):
        if global_batch < 1:
            raise ValueError(f"global_batch={global_batch}: must be >= 1")
        self.stream, self.global_batch, self.sharding = stream, global_batch, sharding
        self.seq_len = stream.row_len - 1
        self.shard = host_rows(sharding, global_batch, self.seq_len)

    def host_rows(self, step: int) -> tuple[Rows, np.ndarray | None]:
        start = step * self.global_batch
        indices = np.arange(start + self.shard.row_start, start + self.shard.row_stop)
        if isinstance(self.stream, MixedStream):
            return self.stream.rows(indices)
        return self.stream.rows(indices), None

    def __call__(self, step: int) -> tuple[dict[str, jax.Array], dict]:
        """(the sharded batch for ``step``, host-side info: source stream and epoch of each local row)."""
        rows, which = self.host_rows(step)
        local = rows.training_batch()
        shape = (self.global_batch, self.seq_len)
        batch = {k: jax.make_array_from_process_local_data(self.sharding, v, shape) for k, v in local.items()}
        return batch, {"stream": which, "epochs": rows.epochs}
