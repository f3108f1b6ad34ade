"""A short, resumable supervised job whose batches are a pure function of the step: the demo generators'
teaching (``demo/teach.py``) and the GRPO warm start (``rl/warm_start.py``) both run it.

It runs on the one step loop (train/step_loop.py): orbax checkpoints every ``checkpoint_every`` steps carry the
job's ``inputs``, and a restart with other inputs is refused naming each differing field; SIGTERM saves and stops
(``preempted``). Because the batch of step s depends only on s, a job killed at any step
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
from synpro_jax.resume_guard import resume_guard
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.step import TrainStep
from synpro_jax.train.step_loop import LoopSettings, Outcome, Step, run_steps

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
) -> Outcome:
    """Train to ``steps`` from ``params`` (random when None) on ``batch(step)`` (host batches, steps from 1),
    resuming from ``out_dir/checkpoints`` (train/step_loop.py). Returns the loop's :class:`Outcome`: the final
    TrainState, the steps done, whether SIGTERM stopped it (``preempted``: the caller stops too), the metric
    records of the run so far (those logged before a resume included) and this call's seconds."""
    out_dir = Path(out_dir)
    ts = TrainStep(model_cfg, mesh, optimizer)
    fresh = {"train": ts.init(jax.random.key(seed), params=params)}

    def restored(state, meta, start):
        log.info("%s: resuming at step %d", desc, start)

    def train(state, done: int) -> Step:
        step = done + 1
        state["train"], m = ts(state["train"], ts.shard_batch(batch(step)))
        if step % log_every and step != steps:
            return Step(state)
        loss = float(m["loss"])
        return Step(state, {"step": step, metric: loss}, {"loss": f"{loss:.3f}"})

    outcome = run_steps(
        LoopSettings(out_dir, steps, checkpoint_every, keep_checkpoints=1, progress=progress, desc=desc),
        # Saved as the trainer saves, under "train": the run loads wherever a synpro run does (train/params_io.py).
        template=fresh,
        fresh=lambda: fresh,
        guard=resume_guard(inputs, str(out_dir / "checkpoints"), key="inputs", remedy="use another out_dir"),
        step=train,
        meta=lambda step: {"inputs": inputs},
        on_restore=restored,
    )
    outcome.state = outcome.state["train"]
    return outcome
