"""A short, resumable supervised job whose batches are a pure function of the step: the demo generators'
teaching (``demo/teach.py``) and the GRPO warm start (``rl/warm_start.py``) both run it.

Orbax checkpoints every ``checkpoint_every`` steps (atomic) carry the job's ``inputs``; a restart with other
inputs is refused, naming the directory. Because the batch of step s depends only on s, a job killed at any step
and restarted sees exactly the batches an uninterrupted one would. The loss is logged to ``metrics.jsonl`` and
TensorBoard under ``metric``, every ``log_every`` steps and at the last.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
from typing import Any

from etils.epath import Path
import jax
from jax.sharding import Mesh

from synpro_jax.models import ModelConfig
from synpro_jax.train.checkpoint import Checkpointer
from synpro_jax.train.metrics import MetricsLog
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.step import TrainStep

log = logging.getLogger(__name__)

__all__ = ["train_supervised"]


def train_supervised(
    model_cfg: ModelConfig,
    mesh: Mesh,
    optimizer: OptimizerConfig,
    batch: Callable[[int], dict],
    steps: int,
    out_dir: str | Path,
    inputs: dict,
    *,
    params: Any | None = None,
    seed: int = 0,
    checkpoint_every: int = 100,
    log_every: int = 10,
    metric: str = "loss",
    desc: str = "train",
    progress: bool = True,
) -> tuple[Any, list[dict], float]:
    """Train to ``steps`` from ``params`` (random when None) on ``batch(step)`` (host batches, steps from 1),
    resuming from ``out_dir/checkpoints``. Returns (the final TrainState, the metric records of the run so far,
    those logged before a resume included, seconds of this call)."""
    import time

    out_dir = Path(out_dir)
    ts = TrainStep(model_cfg, mesh, optimizer)
    state = ts.init(jax.random.key(seed), params=params)
    ckpt = Checkpointer(out_dir / "checkpoints", save_every=checkpoint_every, keep=1)

    def same_inputs(meta: dict) -> None:
        if meta.get("inputs") != inputs:
            raise ValueError(f"{out_dir / 'checkpoints'} was written with other settings; use another out_dir")

    start = 0
    # Saved as the trainer saves, under "train": the run loads wherever a synpro run does (train/params_io.py).
    restored = ckpt.restore({"train": state}, check_meta=same_inputs)
    if restored is not None:
        saved, _, start = restored
        state = saved["train"]
        log.info("%s: resuming at step %d", desc, start)
    metrics = MetricsLog(out_dir, start)
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for step in range(start + 1, steps + 1):
            state, m = ts(state, ts.shard_batch(batch(step)))
            if step % log_every == 0 or step == steps:
                loss = float(m["loss"])
                metrics.write({"step": step, metric: loss})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}")
            ckpt.save(step, {"train": state}, {"inputs": inputs}, force=step == steps)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        ckpt.close()
        metrics.close()
    return state, list(metrics.records), time.perf_counter() - t0
