"""A training run over a stream of token rows: progress bar, JSON-lines metrics, tokens/s and MFU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from synpro_jax.train.metrics import device_peak_flops
from synpro_jax.train.step import TrainState, TrainStep, next_token_batch


class MetricsWriter:
    """Appends one JSON object per line; each line is flushed so a killed run keeps what it logged."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def run(
    step: TrainStep,
    state: TrainState,
    rows: Iterable[np.ndarray],
    *,
    num_steps: int,
    log_every: int = 10,
    metrics_path: Path | None = None,
    progress: bool = True,
) -> tuple[TrainState, list[dict]]:
    """Train ``num_steps`` steps on [B, T+1] token rows; returns the final state and the logged records."""
    seq_len = None
    peak, peak_source = device_peak_flops(step.cfg.dtype)
    peak *= jax.device_count()
    writer = MetricsWriter(metrics_path) if metrics_path else None
    history: list[dict] = []
    it: Iterator[np.ndarray] = iter(rows)
    bar = tqdm(total=num_steps, initial=0, unit="step", disable=not progress, dynamic_ncols=True)
    window_start, window_tokens = time.perf_counter(), 0
    try:
        for i in range(num_steps):
            tokens = next(it)
            seq_len = tokens.shape[1] - 1
            state, metrics = step(state, step.shard_batch(next_token_batch(tokens)))
            window_tokens += tokens.shape[0] * seq_len
            bar.update(1)
            if i == 0:  # keep compilation out of the throughput numbers
                jax.block_until_ready(metrics)
                window_start, window_tokens = time.perf_counter(), 0
            if (i + 1) % log_every == 0 or i + 1 == num_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed if window_tokens else float("nan")
                record = {"step": int(state.step), **metrics, "tokens_per_s": tps,
                          "tokens_per_s_per_device": tps / jax.device_count(),
                          "mfu": tps * step.cfg.train_flops_per_token(seq_len) / peak, "time": time.time()}
                history.append(record)
                if writer:
                    writer.write(record)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{record['mfu']:.1%}")
                window_start, window_tokens = time.perf_counter(), 0
    finally:
        bar.close()
        if writer:
            writer.close()
    if history:
        history[-1]["mfu_peak_source"] = peak_source
    return state, history
