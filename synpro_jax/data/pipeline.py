"""Global training batches from a row stream, built per host and assembled into sharded jax.Arrays.

Step ``s`` uses global rows ``[s * B, (s + 1) * B)``. Each process builds only the rows its devices hold (read
off the batch sharding) and hands them to ``jax.make_array_from_process_local_data``, so a pod never moves
input data between hosts. The data position is the step number and the stage's stream starts: a stage that
continues another run's data reads each stream of its mixture from where that run left it
(:func:`continue_streams`), fixed for the whole stage, so a killed stage resumes from its step number alone.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

import jax
from jax.sharding import NamedSharding
import numpy as np

from synpro_jax.data.mixture import MixedStream
from synpro_jax.data.packing import TRAINING_FEATURES, PackedStream


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
        covered[(idx[0].start or 0) - lo : (global_batch if idx[0].stop is None else idx[0].stop) - lo] = True
    if not covered.all():
        raise ValueError(
            "this process's devices hold a non-contiguous set of batch rows; order the mesh's devices "
            "by process (jax.make_mesh does)"
        )
    return ShardInfo(jax.process_index(), jax.process_count(), lo, hi)


def continue_streams(stream, previous: Mapping | None = None):
    """(the stream a stage reads, a :class:`MixedStream` of the same rows that counts what the stage read, how
    each stream starts) for ``stream``: a :class:`~synpro_jax.data.streams.MixtureInput`, a
    :class:`MixedStream` or a single :class:`PackedStream` (counted as the stream ``"train"``).

    ``previous`` is the data position a continuing stage starts from: per stream name, the token position the
    previous stage reached (:meth:`MixedStream.continuing`). A stream of the previous stage continues from the
    first row it did not read; a stream new in this stage (or holding other documents) starts at row 0. Without
    ``previous`` every stream starts where ``stream`` does. The counter is None for any other stream type."""
    single = isinstance(stream, PackedStream)
    if hasattr(stream, "counting_stream"):
        counting = stream.counting_stream()
    elif isinstance(stream, MixedStream):
        counting = stream.detached()
    elif single:
        counting = MixedStream([stream], [1], names=["train"]).detached()
    else:
        if previous:
            raise ValueError(
                f"a {type(stream).__name__} cannot continue another stage's data position (give a "
                "MixtureInput, MixedStream or PackedStream)"
            )
        return stream, None, {}
    if not previous:
        return stream, counting, {name: "new" for name in counting.names}
    starts, how = counting.continuing(previous)
    if single:
        stream = MixedStream([stream], [1], names=["train"]) if starts.any() else stream
    if starts.any() or not single:
        stream = stream.starting_at(starts)
    return stream, counting.starting_at(starts), how


class TrainBatches:
    """Batches for training step ``s`` as sharded global arrays, from a stream of packed rows.

    Host ``p`` of ``P`` (by the rows its devices hold) takes the global rows ``p, p + P, ...``: step ``s`` holds
    rows ``[s * B, (s + 1) * B)``, host ``p``'s ``i``-th local row being ``s * B + i * P + p``. That is seqio's
    shard layout, so a :class:`~synpro_jax.data.streams.MixtureInput` (the registered seqio Mixture, the run's
    real input) and a random-access stream (validation, tests) give the same batches.
    """

    def __init__(self, stream, global_batch: int, sharding: NamedSharding, prefetch: int = 2):
        if global_batch < 1:
            raise ValueError(f"global_batch={global_batch}: must be >= 1")
        self.stream, self.global_batch, self.sharding = stream, global_batch, sharding
        self.seq_len = stream.row_len - 1
        self.shard = host_rows(sharding, global_batch, self.seq_len)
        self.local_batch = self.shard.row_stop - self.shard.row_start
        if global_batch % self.local_batch or self.shard.row_start % self.local_batch:
            raise ValueError(
                f"global_batch={global_batch}: hosts hold unequal row blocks "
                f"({self.shard.row_start}:{self.shard.row_stop})"
            )
        self.num_row_shards = global_batch // self.local_batch
        self.row_shard = self.shard.row_start // self.local_batch
        self.prefetch = prefetch
        self._iterator, self._next_step = None, None

    @property
    def reads_seqio(self) -> bool:
        return hasattr(self.stream, "dataset")

    def host_row_indices(self, step: int) -> np.ndarray:
        """The global rows this host holds at ``step``, in local order."""
        return step * self.global_batch + np.arange(self.local_batch) * self.num_row_shards + self.row_shard

    def _seqio_rows(self, step: int) -> dict[str, np.ndarray]:
        if self._iterator is None or step != self._next_step:  # start, resume or a jump: reopen at this step
            import seqio  # brings TensorFlow (seconds): only seqio input needs it; the trainer imports this module

            self._iterator = None  # release the old iterator (and its prefetch) before opening the new one

            shard = seqio.ShardInfo(index=self.row_shard, num_shards=self.num_row_shards)
            ds = self.stream.dataset(shard, start_row=step * self.local_batch)
            self._iterator = ds.batch(self.local_batch).prefetch(self.prefetch).as_numpy_iterator()
        self._next_step = step + 1
        return next(self._iterator)

    def host_rows(self, step: int) -> tuple[dict[str, np.ndarray], dict]:
        """(this host's rows of ``step`` as training features, host info: source stream and epoch of each row)."""
        if self.reads_seqio:
            rows = self._seqio_rows(step)
            return {k: rows[k] for k in TRAINING_FEATURES}, {"stream": rows["task"], "epochs": rows["epoch"]}
        indices = self.host_row_indices(step)
        out = self.stream.rows(indices)
        rows, which = out if isinstance(out, tuple) else (out, None)
        return rows.training_batch(), {"stream": which, "epochs": rows.epochs}

    def __call__(self, step: int) -> tuple[dict[str, jax.Array], dict]:
        """(the sharded batch for ``step``, host-side info: source stream and epoch of each local row)."""
        local, info = self.host_rows(step)
        shape = (self.global_batch, self.seq_len)
        batch = {k: jax.make_array_from_process_local_data(self.sharding, v, shape) for k, v in local.items()}
        return batch, info
