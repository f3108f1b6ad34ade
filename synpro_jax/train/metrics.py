"""Throughput accounting: device peak FLOP/s (known accelerators, or a measured matmul rate on CPU) and MFU."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

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
