"""The pretraining loop: sharded steps over a deterministic data stream, validation, metrics, checkpoints.

A :class:`Trainer` is one resumable stage. ``run()`` restores the latest checkpoint in ``out_dir`` if there is
one (refusing a checkpoint written under a different configuration), trains to ``num_steps`` or until the
validation loss plateaus, and returns a summary. Because batch ``s`` is a pure function of the step number, a run
killed at any point and restarted continues exactly as if it had never stopped. SIGTERM (TPU preemption) saves
a checkpoint after the current step and returns with ``preempted=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from synpro_jax.checks import positive_ints
from synpro_jax.data.packing import MixedStream, PackedStream
from synpro_jax.data.pipeline import TrainBatches
from synpro_jax.models import ModelConfig
from synpro_jax.train.checkpoint import Checkpointer
from synpro_jax.train.metrics import device_peak_flops
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.plateau import PlateauDetector
from synpro_jax.train.step import TrainStep

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # 128 + SIGTERM, for supervisors that restart preempted jobs


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    out_dir: str
    num_steps: int
    global_batch: int
    seq_len: int
    z_loss: float = 1e-5
    accum_steps: int = 1
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    plateau_window: int = 3
    plateau_min_rel_improvement: float = 0.01
    stop_on_plateau: bool = False
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        positive_ints(self, "num_steps", "global_batch", "seq_len", "accum_steps", "log_every", "eval_every",
                      "eval_batches", "checkpoint_every", "keep_checkpoints")
        if self.global_batch % self.accum_steps:
            raise ValueError(f"TrainerConfig.global_batch={self.global_batch} is not divisible by "
                             f"accum_steps={self.accum_steps}")


class _MetricsLog:
    """metrics.jsonl plus TensorBoard, written by process 0 only."""

    def __init__(self, out_dir: Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = out_dir / "metrics.jsonl"
        self.records: list[dict] = []
        if not self.enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # keep what the checkpoint covers; steps after it are about to be redone
            kept = [r for r in map(json.loads, self.path.read_text().splitlines()) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
            self.records = kept
        self._fh = self.path.open("a", encoding="utf-8")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

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


def plot_loss_curve(records: list[dict], path: Path, title: str = "") -> None:
    """Training and validation loss against step, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, model_cfg: ModelConfig, mesh: Mesh, opt_cfg: OptimizerConfig, cfg: TrainerConfig,
                 train_stream: PackedStream | MixedStream, val_stream: PackedStream | None = None,
                 init_params: Any | None = None, data_fingerprint: str = "", summary_extra: dict | None = None):
        if train_stream.row_len != cfg.seq_len + 1:
            raise ValueError(f"the train stream packs rows of {train_stream.row_len} tokens but "
                             f"TrainerConfig.seq_len={cfg.seq_len} needs {cfg.seq_len + 1}")
        if cfg.seq_len > model_cfg.max_seq_len:
            raise ValueError(f"TrainerConfig.seq_len={cfg.seq_len} exceeds ModelConfig.max_seq_len="
                             f"{model_cfg.max_seq_len}")
        self.model_cfg, self.mesh, self.opt_cfg, self.cfg = model_cfg, mesh, opt_cfg, cfg
        self.out_dir = Path(cfg.out_dir)
        self.step_fn = TrainStep(model_cfg, mesh, opt_cfg, z_loss=cfg.z_loss, accum_steps=cfg.accum_steps)
        self.batches = TrainBatches(train_stream, cfg.global_batch, self.step_fn.batch_sharding)
        self.val_batches = TrainBatches(val_stream, cfg.global_batch, self.step_fn.batch_sharding) if val_stream else None
        self.init_params = init_params
        self.summary_extra = dict(summary_extra or {})
        self.plateau = PlateauDetector(cfg.plateau_window, cfg.plateau_min_rel_improvement)
        self.stream_names = getattr(train_stream, "names", None)
        self.fingerprint = hashlib.sha1(json.dumps(
            [dataclasses.asdict(model_cfg), dataclasses.asdict(opt_cfg), cfg.global_batch, cfg.seq_len,
             cfg.accum_steps, cfg.z_loss, cfg.seed, data_fingerprint], sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        self._stop = threading.Event()

    # --- state ---------------------------------------------------------------------------------------------------
    def _fresh_state(self) -> dict:
        train = self.step_fn.init(jax.random.key(self.cfg.seed), params=self.init_params)
        return {"train": train, "rng": jax.random.key_data(jax.random.key(self.cfg.seed + 1))}

    def _meta(self, step: int) -> dict:
        return {"step": step, "rows_consumed": step * self.cfg.global_batch, "fingerprint": self.fingerprint,
                "plateau": self.plateau.state_dict(), "time": time.time()}

    def evaluate(self, params) -> dict:
        if self.val_batches is None:
            return {}
        nll = tokens = 0.0
        for i in range(self.cfg.eval_batches):
            batch, _ = self.val_batches(i)
            sums = jax.device_get(self.step_fn.eval_sums(params, batch))
            nll, tokens = nll + float(sums.nll), tokens + float(sums.tokens)
        val = nll / max(tokens, 1.0)
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0)), "val_tokens": tokens}

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        ckpt = Checkpointer(self.out_dir / "checkpoints", save_every=cfg.checkpoint_every,
                            keep=cfg.keep_checkpoints, async_save=cfg.async_checkpoints)
        state = self._fresh_state()

        def same_config(meta: dict) -> None:
            if meta.get("fingerprint") != self.fingerprint:
                raise ValueError(f"{ckpt.directory} holds a checkpoint of a different configuration (model, "
                                 "optimizer, batch, sequence length, seed or data changed); use a new out_dir")

        try:
            restored = ckpt.restore(state, check_meta=same_config)
        except BaseException:
            ckpt.close()
            raise
        start = 0
        if restored is not None:
            state, meta, start = restored
            self.plateau.load_state_dict(meta.get("plateau", {}))
            log.info("resuming from step %d", start)
        metrics_log = _MetricsLog(self.out_dir, start)
        peak = device_peak_flops(self.model_cfg.dtype)[0] * jax.device_count()
        fpt = self.model_cfg.train_flops_per_token(cfg.seq_len)

        previous = signal.getsignal(signal.SIGTERM)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        bar = tqdm(total=cfg.num_steps, initial=start, unit="step", dynamic_ncols=True,
                   disable=not cfg.progress or jax.process_index() != 0)
        window_t, window_tokens = time.perf_counter(), 0
        preempted = plateaued = False
        step = start
        try:
            while step < cfg.num_steps:
                batch, info = self.batches(step)
                state["train"], metrics = self.step_fn(state["train"], batch)
                step += 1
                window_tokens += cfg.global_batch * cfg.seq_len
                bar.update(1)
                if step == start + 1:  # keep compilation out of the throughput numbers
                    jax.block_until_ready(metrics)
                    window_t, window_tokens = time.perf_counter(), 0
                record = None
                if step % cfg.log_every == 0 or step == cfg.num_steps:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    dt = time.perf_counter() - window_t
                    tps = window_tokens / dt if window_tokens else float("nan")
                    record = {"step": step, **metrics, "tokens_per_s": tps,
                              "tokens_per_s_per_device": tps / jax.device_count(), "mfu": tps * fpt / peak,
                              "epoch": int(info["epochs"].max())}
                    window_t, window_tokens = time.perf_counter(), 0
                if self.val_batches is not None and (step % cfg.eval_every == 0 or step == cfg.num_steps):
                    record = record or {"step": step}
                    record.update(self.evaluate(state["train"].params))
                    plateaued = self.plateau.update(record["val_loss"])
                    record["plateau"] = plateaued
                if record:
                    metrics_log.write(record)
                    bar.set_postfix({k: f"{record[k]:.3f}" for k in ("loss", "val_loss") if k in record})
                ckpt.save(step, state, self._meta(step))
                if self._stop.is_set():
                    preempted = True
                    break
                if plateaued and cfg.stop_on_plateau:
                    break
            if ckpt.latest_step() != step:
                ckpt.save(step, state, self._meta(step), force=True)
        finally:
            bar.close()
            ckpt.close()
            metrics_log.close()
            if in_main:
                signal.signal(signal.SIGTERM, previous)
        summary = {"step": step, "preempted": preempted, "plateaued": plateaued,
                   "out_dir": str(self.out_dir), "checkpoint_step": step, **self.summary_extra}
        last = [r for r in metrics_log.records if "loss" in r]
        if last:
            summary.update({k: last[-1][k] for k in ("loss", "tokens_per_s", "mfu") if k in last[-1]})
        vals = [r["val_loss"] for r in metrics_log.records if "val_loss" in r]
        if vals:
            summary["val_loss"] = vals[-1]
        if jax.process_index() == 0 and metrics_log.records:
            plot_loss_curve(metrics_log.records, self.out_dir / "loss_curve.png", title=self.model_cfg.name)
            tmp = self.out_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2))
            os.replace(tmp, self.out_dir / "summary.json")
        self.state = state
        return summary
