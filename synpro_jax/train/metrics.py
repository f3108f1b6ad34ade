"""Throughput accounting (device peak FLOP/s: known accelerators, or a measured matmul rate on CPU) and the
metrics log every long job writes (JSONL + TensorBoard)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time

from etils import epath
import jax
import jax.numpy as jnp

from synpro_jax import atomic

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per chip, from the vendors' spec sheets.
PEAK_BF16_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def measure_matmul_flops(dtype=jnp.float32, n: int = 2048, reps: int = 10) -> float:
    """Best observed FLOP/s of an n x n matmul on the default device (bf16 inputs accumulate in fp32)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


@functools.lru_cache(maxsize=4)
def device_peak_flops(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number came from). CPUs and unknown chips are measured."""
    kind = jax.devices()[0].device_kind
    if kind in PEAK_BF16_FLOPS and dtype == "bfloat16":
        return PEAK_BF16_FLOPS[kind], f"spec sheet ({kind}, bf16)"
    jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    return measure_matmul_flops(jdtype), f"measured {dtype} matmul rate ({kind})"


def save_png(fig, path: epath.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as a PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt  # heavy: only process 0 draws plots, and readers of the log never do

    try:
        atomic.write_file(path, lambda tmp: fig.savefig(tmp, dpi=dpi), suffix=".png")
    finally:
        plt.close(fig)


def read_records(path: epath.PathLike) -> list[dict]:
    """The JSONL records of ``path``; a torn last line (a kill or a full disk mid-write) is dropped with a warning,
    a bad line elsewhere is an error naming it."""
    lines = epath.Path(path).read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s: dropping its torn last line %d", path, i + 1)
                continue
            raise ValueError(f"{path}:{i + 1}: not a JSON record") from None
    return records


class TensorBoard:
    """A tensorboardX writer for ``directory``, local or on an object store. An object store cannot append, so
    there the events go to a local staging folder and each file is uploaded whole on :meth:`flush`."""

    def __init__(self, directory: epath.PathLike, purge_step: int | None = None):
        from tensorboardX import SummaryWriter  # loads torch where installed (seconds): only a job writing events

        self.directory = epath.Path(directory)
        self.remote = atomic.is_remote(self.directory)
        self._staging = tempfile.mkdtemp(prefix="synpro_tensorboard_") if self.remote else None
        self._writer = SummaryWriter(self._staging or os.fspath(self.directory), purge_step=purge_step)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self._writer.flush()
        if self.remote:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name in os.listdir(self._staging):
                with open(os.path.join(self._staging, name), "rb") as f:
                    atomic.write_bytes(self.directory / name, f.read())

    def close(self) -> None:
        self._writer.close()
        self.flush()
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)


class MetricsLog:
    """metrics.jsonl plus TensorBoard, written by process 0 only. On a resume from step s, records after s (which
    are about to be redone) are dropped from the JSONL and purged from TensorBoard.

    On an object store (``gs://``), which has no append, the JSONL is rewritten whole and the TensorBoard events
    (written to a local staging folder) are uploaded at most every ``flush_s`` seconds, and on close.
    """

    def __init__(self, out_dir: epath.PathLike, resume_step: int, flush_s: float = 30.0):
        out_dir = epath.Path(out_dir)
        self.enabled = jax.process_index() == 0
        self.path = out_dir / "metrics.jsonl"
        self.records: list[dict] = []
        self.remote = atomic.is_remote(out_dir)
        self.flush_s = flush_s
        self._last_flush = time.monotonic()
        if not self.enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # keep what the checkpoint covers; steps after it are about to be redone
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self.records = kept
        self._tb_dir = out_dir / "tensorboard"
        stale = sorted(self._tb_dir.glob("events.out.tfevents.*")) if resume_step == 0 else []
        for path in stale:  # an attempt that never checkpointed: every step it logged is about to be redone
            path.unlink()
        if stale:
            log.warning(
                "removed %d TensorBoard event file(s) in %s left by an attempt that stopped before its first "
                "checkpoint; training starts again at step 0",
                len(stale),
                self._tb_dir,
            )
        self._fh = None if self.remote else self.path.open("a", encoding="utf-8")
        # After a checkpoint at step s, the purge event makes TensorBoard drop the older files' steps > s.
        self._tb = TensorBoard(self._tb_dir, purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        if self._fh is not None:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, record["step"])
        if self.remote and time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far visible at ``out_dir`` (a no-op locally: lines go out as written)."""
        if not self.enabled:
            return
        self._tb.flush()
        if self.remote:
            atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            if self._fh is not None:
                self._fh.close()
            self._tb.close()
            if self.remote:
                atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
