"""The one resumable step loop (train/step_loop.py) on a counter job: resume, refusal naming the changed fields,
SIGTERM, an early finish, and the records kept across a resume."""

import jax.numpy as jnp
import pytest

from synpro_jax.distributed import Preemption
from synpro_jax.resume_guard import ABSENT, check, differences, resume_guard
from synpro_jax.train.step_loop import LoopSettings, Step, run_steps


def _run(tmp_path, num_steps, settings=None, preemption=None, stop_at=None, finished=lambda: False):
    fields = settings or {"lr": 0.1, "model": {"d": 4}}
    seen = []

    def step(state, done):
        seen.append(done)
        if stop_at is not None and done + 1 == stop_at:
            preemption.request()
        state = {"x": state["x"] + 1.0}
        return Step(state, {"step": done + 1, "x": float(state["x"])}, {"x": f"{float(state['x']):.0f}"})

    outcome = run_steps(
        LoopSettings(tmp_path / "job", num_steps, checkpoint_every=2, async_checkpoints=False, progress=False),
        template={"x": jnp.zeros(())},
        fresh=lambda: {"x": jnp.zeros(())},
        guard=resume_guard(fields, str(tmp_path / "job")),
        step=step,
        meta=lambda s: {"settings": fields},
        preemption=preemption,
        finished=finished,
    )
    return outcome, seen


def test_a_job_resumes_from_its_checkpoint_and_keeps_its_records(tmp_path):
    first, seen = _run(tmp_path, 3)
    assert (first.step, first.start, first.preempted, seen) == (3, 0, False, [0, 1, 2])
    assert float(first.state["x"]) == 3.0
    more, seen = _run(tmp_path, 5)  # resumes at 3 (the last step is always saved)
    assert (more.start, seen, float(more.state["x"])) == (3, [3, 4], 5.0)
    assert [r["step"] for r in more.records] == [1, 2, 3, 4, 5]


def test_a_restart_with_other_settings_is_refused_naming_every_field(tmp_path):
    _run(tmp_path, 2)
    with pytest.raises(ValueError, match=r"lr: 0.1 then, 0.2 now; model.d: 4 then, 8 now"):
        _run(tmp_path, 4, settings={"lr": 0.2, "model": {"d": 8}})


def test_sigterm_saves_after_the_current_step_and_stops(tmp_path):
    stopped, seen = _run(tmp_path, 6, preemption=Preemption(), stop_at=3)
    assert (stopped.step, stopped.preempted, seen) == (3, True, [0, 1, 2])
    rest, seen = _run(tmp_path, 6)  # step 3 was not a checkpoint step: saved because of the stop
    assert (rest.start, seen, float(rest.state["x"])) == (3, [3, 4, 5], 6.0)


def test_a_job_that_says_it_is_finished_stops_early(tmp_path):
    calls = []
    outcome, seen = _run(tmp_path, 10, finished=lambda: len(calls.append(1) or calls) > 4)
    assert outcome.step == 4 and seen == [0, 1, 2, 3] and not outcome.preempted


def test_differences_look_inside_dicts_and_name_missing_fields():
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    new = {"a": 1, "b": {"c": [1, 3]}, "e": 2.5}
    assert differences(old, new) == [("b.c[1]", 2, 3), ("b.d", "x", ABSENT), ("e", ABSENT, 2.5)]
    check({"t": (1, 2)}, {"t": [1, 2]}, "here")  # tuples and lists are the same JSON
    with pytest.raises(ValueError, match=r"^here was made with other settings \(t: \[1, 2\] then, \[1\] now\)"):
        check({"t": (1, 2)}, {"t": [1]}, "here")
