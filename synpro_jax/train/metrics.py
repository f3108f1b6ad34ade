"""Throughput accounting (device peak FLOP/s: known accelerators, or a measured matmul rate on CPU) and the
metrics log every long job writes (JSONL + TensorBoard)."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path

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


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as a PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic.write_file(path, lambda tmp: fig.savefig(tmp, dpi=dpi), suffix=".png")
    finally:
        plt.close(fig)


def read_records(path: Path) -> list[dict]:
    """The JSONL records of ``path``; a torn last line (a kill or a full disk mid-write) is dropped with a warning,
    a bad line elsewhere is an error naming it."""
    lines = path.read_text().splitlines()
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


class MetricsLog:
    """metrics.jsonl plus TensorBoard, written by process 0 only. On a resume from step s, records after s (which
    are about to be redone) are dropped from the JSONL and purged from TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = out_dir / "metrics.jsonl"
        self.records: list[dict] = []
        if not self.enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # keep what the checkpoint covers; steps after it are about to be redone
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self.records = kept
        tb_dir = out_dir / "tensorboard"
        stale = sorted(tb_dir.glob("events.out.tfevents.*")) if resume_step == 0 else []
        for path in stale:  # an attempt that never checkpointed: every step it logged is about to be redone
            path.unlink()
        if stale:
            log.warning("removed %d TensorBoard event file(s) in %s left by an attempt that stopped before its first "
                        "checkpoint; training starts again at step 0", len(stale), tb_dir)
        self._fh = self.path.open("a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        # After a checkpoint at step s, the purge event makes TensorBoard drop the older files' steps > s.
        self._tb = SummaryWriter(str(tb_dir), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self._fh.close()
            self._tb.flush()
            self._tb.close()
