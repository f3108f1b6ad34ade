"""One resumable step loop, for every job that trains by steps: pretraining (train/trainer.py), GRPO
(rl/trainer.py) and the short supervised jobs (train/supervised.py: the demo's teaching, the GRPO warm start).

What it does for each of them, the same way:

- restore the latest checkpoint in ``out_dir/checkpoints`` if there is one, refused by the job's resume guard
  (synpro_jax/resume_guard.py) when it was made with other settings, before any file is touched;
- call the job's ``step`` until ``num_steps`` (or until the job says it is finished), with a progress bar showing
  rate and ETA, a heartbeat per step, and the records the job returns written to ``metrics.jsonl`` and
  TensorBoard (a resume drops the records after the checkpoint, which are about to be redone);
- save every ``checkpoint_every`` steps and at the end, with the job's metadata;
- on SIGTERM (a TPU preemption, agreed across hosts) save after the current step and stop, ``preempted``.

Because each job's batch is a pure function of its step, a job killed anywhere and restarted ends exactly as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import time
from typing import Any

from etils.epath import Path
import jax
from tqdm.auto import tqdm

from synpro_jax import heartbeat
from synpro_jax.distributed import Preemption
from synpro_jax.train.checkpoint import Checkpointer
from synpro_jax.train.metrics import MetricsLog

__all__ = ["LoopSettings", "Step", "Outcome", "run_steps"]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    out_dir: str | Path
    num_steps: int
    checkpoint_every: int
    keep_checkpoints: int = 1
    async_checkpoints: bool = True
    progress: bool = True
    desc: str | None = None  # the progress bar's label


@dataclasses.dataclass
class Step:
    """What one step gives back: the new state, the record to log (None: nothing this step), the progress bar's
    postfix."""

    state: Any
    record: dict | None = None
    postfix: dict | None = None


@dataclasses.dataclass
class Outcome:
    state: Any
    step: int  # steps done, those before a resume included
    start: int  # the step this call resumed from
    preempted: bool
    records: list[dict]  # metrics.jsonl's records, those logged before a resume included
    seconds: float  # of this call's loop


def run_steps(
    settings: LoopSettings,
    *,
    template: Any,
    fresh: Callable[[], Any],
    guard: Callable[[dict], None],
    step: Callable[[Any, int], Step],
    meta: Callable[[int], dict],
    on_restore: Callable[[Any, dict, int], Any] | None = None,
    on_start: Callable[[], None] | None = None,
    after_log: Callable[[int, dict | None], None] | None = None,
    finished: Callable[[], bool] = lambda: False,
    preemption: Preemption | None = None,
) -> Outcome:
    """Run (or resume) a job's steps.

    ``template``: the state's structure to restore into (arrays or ShapeDtypeStructs with their shardings);
    ``fresh()``: the starting state when there is no checkpoint. ``step(state, s)`` runs step ``s`` (from 0) and
    returns a :class:`Step`. ``meta(s)``: the checkpoint metadata after ``s`` steps (the resume guard's fields
    with it). ``on_restore(state, meta, start)`` may return a replacement state. ``on_start()`` runs once the
    checkpoint (if any) is accepted: the place to write files describing the run, which a refused restart must
    not touch. ``after_log(s, record)`` runs after each step's record is written (a check that may stop the job
    with an exception: the checkpoint before it is kept). ``finished()`` ends the loop early (a plateau).
    """
    out_dir = Path(settings.out_dir)
    ckpt = Checkpointer(
        out_dir / "checkpoints",
        save_every=settings.checkpoint_every,
        keep=settings.keep_checkpoints,
        async_save=settings.async_checkpoints,
    )
    restored = ckpt.restore(template, check_meta=guard)  # closes itself if it raises
    start = 0
    if restored is None:
        state = fresh()
    else:
        state, saved_meta, start = restored
        if on_restore is not None:
            state = on_restore(state, saved_meta, start) or state
    if on_start is not None:
        on_start()
    metrics = MetricsLog(out_dir, start)
    preemption = preemption or Preemption()
    done, preempted = start, False
    t0 = time.perf_counter()
    with preemption:  # SIGTERM handled for the loop's length
        bar = tqdm(
            total=settings.num_steps,
            initial=start,
            desc=settings.desc,
            unit="step",
            dynamic_ncols=True,
            disable=not settings.progress or jax.process_index() != 0,
        )
        try:
            while done < settings.num_steps and not finished():
                result = step(state, done)
                state = result.state
                done += 1
                bar.update(1)
                heartbeat.beat()
                if result.record is not None:
                    metrics.write(result.record)
                if result.postfix:
                    bar.set_postfix(result.postfix, refresh=False)
                if after_log is not None:
                    after_log(done, result.record)
                ckpt.save(done, state, meta(done))
                if preemption.stop_after(done):
                    preempted = done < settings.num_steps
                    break
            if ckpt.latest_step() != done:  # the last step, or the one SIGTERM stopped after
                ckpt.save(done, state, meta(done), force=True)
        finally:
            bar.close()
            ckpt.close()
            metrics.close()
    return Outcome(state, done, start, preempted, list(metrics.records), time.perf_counter() - t0)
