"""synpro_jax.heartbeat: the file tpu/babysit.py --stale_s reads, touched at most once per interval, never an error
for the job; and the loops that beat (a real tiny training run; the others by their source)."""

import inspect
import logging
import os

import jax
import numpy as np
import pytest

from synpro_jax import heartbeat


@pytest.fixture
def clock(monkeypatch):
    """A fake monotonic clock for the throttle, and a fresh module state (no beat yet, no warning yet)."""
    now = [1000.0]
    monkeypatch.setattr(heartbeat, "_clock", lambda: now[0])
    monkeypatch.setattr(heartbeat, "_last", None)
    monkeypatch.setattr(heartbeat, "_warned", False)
    monkeypatch.delenv(heartbeat.INTERVAL_ENV, raising=False)
    return now


def test_unset_does_nothing(clock, monkeypatch, tmp_path):
    monkeypatch.delenv(heartbeat.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    heartbeat.beat()
    monkeypatch.setenv(heartbeat.ENV, "")
    heartbeat.beat()
    assert list(tmp_path.iterdir()) == []


def test_beat_creates_then_touches_at_most_once_per_interval(clock, monkeypatch, tmp_path):
    path = tmp_path / "run.heartbeat"
    monkeypatch.setenv(heartbeat.ENV, str(path))
    heartbeat.beat()
    assert path.exists() and path.read_text() == ""
    os.utime(path, (1, 1))  # as if it were old: a touch shows as a new mtime
    clock[0] += 59
    heartbeat.beat()
    assert path.stat().st_mtime == 1  # throttled: 59 s < the default 60
    clock[0] += 1
    heartbeat.beat()
    assert path.stat().st_mtime > 1
    os.utime(path, (1, 1))
    monkeypatch.setenv(heartbeat.INTERVAL_ENV, "5")
    clock[0] += 5
    heartbeat.beat()
    assert path.stat().st_mtime > 1
    path.write_text("kept")  # touching never truncates
    clock[0] += 5
    heartbeat.beat()
    assert path.read_text() == "kept"


def test_unwritable_path_warns_once_and_never_raises(clock, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(heartbeat.ENV, str(tmp_path / "no" / "such" / "dir" / "run.heartbeat"))
    monkeypatch.setenv(heartbeat.INTERVAL_ENV, "0")  # try on every beat
    with caplog.at_level(logging.WARNING, logger="synpro_jax.heartbeat"):
        for _ in range(3):
            heartbeat.beat()
            clock[0] += 1
    assert len(caplog.records) == 1 and heartbeat.ENV in caplog.records[0].getMessage()


def test_a_bad_interval_falls_back_to_the_default(clock, monkeypatch, tmp_path, caplog):
    path = tmp_path / "hb"
    monkeypatch.setenv(heartbeat.ENV, str(path))
    monkeypatch.setenv(heartbeat.INTERVAL_ENV, "soon")
    with caplog.at_level(logging.WARNING, logger="synpro_jax.heartbeat"):
        heartbeat.beat()
        os.utime(path, (1, 1))
        clock[0] += 30
        heartbeat.beat()
    assert path.stat().st_mtime == 1 and heartbeat.INTERVAL_ENV in caplog.text


def test_training_beats(clock, monkeypatch, tmp_path):
    """A real (tiny) training run touches the file named by SYNPRO_HEARTBEAT as it steps."""
    from synpro_jax import models, sharding
    from synpro_jax.data.corpus import TokenizedCorpus
    from synpro_jax.data.packing import PackedStream
    from synpro_jax.train import OptimizerConfig
    from synpro_jax.train.trainer import Trainer, TrainerConfig

    path = tmp_path / "run.heartbeat"
    monkeypatch.setenv(heartbeat.ENV, str(path))
    rng = np.random.default_rng(0)
    docs = [(rng.integers(2, 60) + np.arange(rng.integers(3, 40))) % 64 + 2 for _ in range(40)]
    corpus = TokenizedCorpus.from_token_lists(docs, [f"d{i}" for i in range(len(docs))])
    trainer = Trainer(
        models.get_preset("tiny"),
        sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1]),
        OptimizerConfig(learning_rate=3e-3, warmup_steps=0),
        TrainerConfig(
            out_dir=str(tmp_path / "run"),
            num_steps=2,
            global_batch=8,
            seq_len=32,
            log_every=1,
            eval_every=100,
            checkpoint_every=100,
            async_checkpoints=False,
            progress=False,
        ),
        train_stream=PackedStream(corpus, 33, eos_id=1, seed=0),
    )
    trainer.run()
    assert path.exists()


def _source(where: str) -> str:
    import importlib

    module, _, name = where.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return inspect.getsource(obj)


@pytest.mark.parametrize(
    "where",
    [
        "synpro_jax.train.step_loop:run_steps",
        "synpro_jax.generation.synthesize:Synthesizer.run_shard",
        "synpro_jax.influence.probe:score_corpus",
    ],
)
def test_the_other_loops_beat(where):
    """The step loop (GRPO's, the supervised jobs'), synthesis batches and corpus-scoring chunks beat too (too slow to
    run here for that alone)."""
    assert "heartbeat.beat()" in _source(where)


@pytest.mark.parametrize("where", ["synpro_jax.rl.trainer:GRPOTrainer.run", "synpro_jax.train.trainer:Trainer.run"])
def test_the_trainers_step_in_the_loop_that_beats(where):
    assert "run_steps(" in _source(where)
