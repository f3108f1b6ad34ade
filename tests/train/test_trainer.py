"""Trainer pieces in-process: validation reads each held-out token once, in the train step's micro-batches, and a
restart leaves no stale TensorBoard events or metrics."""

import functools
import json
import logging
import struct

import jax
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.data.corpus import TokenizedCorpus
from synpro_jax.data.packing import PackedStream
from synpro_jax.train import OptimizerConfig
from synpro_jax.train.trainer import Trainer, TrainerConfig

SEQ = 32
EOS = 1


def corpus(seed: int, docs: int) -> TokenizedCorpus:
    rng = np.random.default_rng(seed)
    toks = [(rng.integers(2, 60) + np.arange(rng.integers(3, 40))) % 64 + 2 for _ in range(docs)]
    return TokenizedCorpus.from_token_lists(toks, [f"d{i}" for i in range(docs)])


def make_trainer(
    out_dir, val_docs=6, accum_steps=1, eval_batches=4, num_steps=2, mesh=(2, 2, 2), lr=3e-3, train_docs=120, **knobs
):
    """A tiny trainer; ``knobs`` override TrainerConfig fields (eval_every, checkpoint_every, keep_best, ...)."""
    cfg = models.get_preset("tiny")
    devices = jax.devices()[: int(np.prod(mesh))]
    settings = {"eval_every": 100, "checkpoint_every": 100, **knobs}
    trainer = Trainer(
        cfg,
        sharding.make_mesh(sharding.MeshConfig(*mesh), devices=devices),
        OptimizerConfig(learning_rate=lr, warmup_steps=0),
        TrainerConfig(
            out_dir=str(out_dir),
            num_steps=num_steps,
            global_batch=8,
            seq_len=SEQ,
            log_every=1,
            eval_batches=eval_batches,
            accum_steps=accum_steps,
            async_checkpoints=False,
            progress=False,
            **settings,
        ),
        train_stream=PackedStream(corpus(0, train_docs), SEQ + 1, eos_id=EOS, seed=0),
        val_stream=PackedStream(corpus(1, val_docs), SEQ + 1, eos_id=EOS, seed=0, shuffle=False),
    )
    return cfg, trainer


def reference_validation(cfg, params, docs) -> tuple[float, int]:
    """Mean NLL over one pass of the held-out documents laid end to end (each + EOS) and cut into rows of
    SEQ + 1 tokens, predicting within a document only: built from the documents, not from the trainer's stream."""
    stream = np.concatenate([np.append(d, EOS) for d in docs])
    doc_of = np.concatenate([np.full(len(d) + 1, i) for i, d in enumerate(docs)])
    L = SEQ + 1
    forward = jax.jit(functools.partial(models.forward, cfg))
    nll = tokens = 0.0
    for start in range(0, len(stream), L):
        tok, seg = stream[start : start + L], doc_of[start : start + L]
        n = len(tok)
        if n < 2:
            continue
        pos = np.zeros(n, np.int32)
        for j in range(1, n):
            pos[j] = pos[j - 1] + 1 if seg[j] == seg[j - 1] else 0
        seg_ids = (np.concatenate([[0], np.cumsum(seg[1:] != seg[:-1])]) + 1).astype(np.int32)
        logits = forward(params, tok[None, :-1], positions=pos[None, :-1], segment_ids=seg_ids[None, :-1])
        mask = (seg[1:] == seg[:-1]).astype(np.float32)[None]
        sums = models.loss_sums(logits, tok[None, 1:], mask)
        nll, tokens = nll + float(sums.nll), tokens + float(sums.tokens)
    return nll / tokens, int(tokens)


@pytest.mark.slow
def test_small_validation_set_is_read_once_and_said_so(tmp_path, caplog):
    """6 held-out documents are ~4 rows; eval_batches=4 x global_batch=8 asks for 32. The old trainer packed 32 rows
    by wrapping into more epochs, counting every document about 8 times."""
    with caplog.at_level(logging.WARNING, logger="synpro_jax.train.trainer"):
        cfg, trainer = make_trainer(tmp_path / "a")
    params = trainer.step_fn.init(jax.random.key(3)).params
    got = trainer.evaluate(params)
    held_out = corpus(1, 6)
    want_loss, want_tokens = reference_validation(
        cfg, jax.device_get(params), [held_out.doc(i) for i in range(held_out.num_docs)]
    )
    assert got["val_tokens"] == want_tokens
    np.testing.assert_allclose(got["val_loss"], want_loss, rtol=1e-5)
    warned = [r.getMessage() for r in caplog.records if "validation" in r.getMessage()]
    assert len(warned) == 1 and "eval_batches=4" in warned[0] and "once" in warned[0]
    assert trainer.eval_plan[0] == 1
    _, more = make_trainer(tmp_path / "b", eval_batches=50)  # asking for more changes nothing
    assert more.evaluate(params) == got


def test_large_validation_set_reads_eval_batches(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="synpro_jax.train.trainer"):
        _, trainer = make_trainer(tmp_path, val_docs=200, eval_batches=2)
    assert trainer.eval_plan[0] == 2 and not [r for r in caplog.records if "validation" in r.getMessage()]
    params = trainer.step_fn.init(jax.random.key(3)).params
    assert trainer.evaluate(params)["val_tokens"] > 8 * SEQ  # more than one batch's worth


@pytest.mark.slow
def test_evaluation_runs_in_the_train_steps_micro_batches(tmp_path):
    """The same numbers with accum_steps=4, and the compiled evaluation holds a quarter of the batch at a time."""
    _, one = make_trainer(tmp_path / "one", val_docs=200, eval_batches=2, mesh=(2, 1, 1))
    _, four = make_trainer(tmp_path / "four", val_docs=200, eval_batches=2, accum_steps=4, mesh=(2, 1, 1))
    params = one.step_fn.init(jax.random.key(3)).params
    a, b = one.evaluate(params), four.evaluate(params)
    assert a["val_tokens"] == b["val_tokens"]
    np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)

    def temp_bytes(trainer):
        batch = trainer.validation_batch(0)
        with jax.set_mesh(trainer.mesh):
            compiled = trainer.eval_step.lower(params, batch).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(four) < 0.5 * temp_bytes(one)


# --- restarts --------------------------------------------------------------------------------------------------------
def read_scalars(tb_dir) -> list[tuple[int, str, float]]:
    """Every scalar in every event file (TFRecord framing read by hand: no TensorBoard needed)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        off = 0
        while off + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[off : off + 8])
            event = event_pb2.Event.FromString(data[off + 12 : off + 12 + n])
            off += 12 + n + 4
            out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out


def write_stale(out_dir, steps, value=99.0):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(out_dir / "tensorboard"))
    for s in steps:
        writer.add_scalar("loss", value, s)
    writer.close()
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps({"step": s, "loss": value}) + "\n" for s in steps)


@pytest.mark.slow
def test_restart_before_the_first_checkpoint_leaves_no_stale_events(tmp_path):
    """An attempt killed at step 6 with no checkpoint logged steps 1..6; the restart redoes them from step 0."""
    out = tmp_path / "run"
    out.mkdir()
    write_stale(out, range(1, 7))
    _, trainer = make_trainer(out, num_steps=2, mesh=(1, 1, 1))
    trainer.run()
    losses = [(s, v) for s, tag, v in read_scalars(out / "tensorboard") if tag == "loss"]
    assert [s for s, _ in losses] == [1, 2] and 99.0 not in [v for _, v in losses]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] != 99.0 for r in records)


@pytest.mark.slow  # two trainer runs end to end
def test_a_run_continues_another_runs_weights_optimizer_schedule_and_data(tmp_path):
    """A SynPro round goes on from the plateau checkpoint on a new mixture: run B starts from run A's latest
    checkpoint (weights, AdamW moments and count, step) and trains on its own mixture. Its parameters equal A's
    restored training state stepped by hand through B's first batches, and its schedule continues A's warmup.
    Its data continues A's too: the organic stream goes on from the rows A read (not from A's first rows), its
    epoch counter goes on, and a stream new in B starts at row 0. B killed after a step and resumed is B."""
    from synpro_jax.data.mixture import MixedStream
    from synpro_jax.train import params_io
    from synpro_jax.train.checkpoint import Checkpointer

    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    opt = OptimizerConfig(learning_rate=3e-3, warmup_steps=8)
    organic_docs = corpus(0, 20)  # ~460 stream tokens: A's 3 steps of 8 rows x 33 tokens read 1.7 epochs
    organic = PackedStream(organic_docs, SEQ + 1, eos_id=EOS, seed=0)
    new = PackedStream(corpus(5, 120), SEQ + 1, eos_id=EOS, seed=0)

    def trainer(out, streams, num_steps=3, data_start=(), **init):
        mixed = MixedStream(list(streams.values()), [1] * len(streams), names=list(streams), block_rows=16)
        return Trainer(
            cfg,
            mesh,
            opt,
            TrainerConfig(
                out_dir=str(out),
                num_steps=num_steps,
                global_batch=8,
                seq_len=SEQ,
                log_every=1,
                eval_every=100,
                checkpoint_every=100,
                async_checkpoints=False,
                progress=False,
                data_start=data_start,
            ),
            train_stream=mixed,
            **init,
        )

    a = trainer(tmp_path / "a", {"organic": organic})
    read = a.run()["data"]
    assert read["organic"] | {"stream": None} == {
        "start_row": 0,
        "rows": 24,
        "end_row": 24,
        "row_len": SEQ + 1,
        "tokens": 24 * (SEQ + 1),
        "unique_tokens": organic_docs.num_tokens,
        "epoch_tokens": organic.epoch_tokens,
        "epochs": [0, 1],
        "position_tokens": 24 * (SEQ + 1),
        "stream": None,
        "from": "new",
    }
    loaded = params_io.load(cfg, mesh, tmp_path / "a", with_adam=True)
    assert loaded.step == 3 and loaded.adam is not None
    init = dict(init_params=loaded.params, init_adam=loaded.adam, init_step=loaded.step, init_source=loaded.source)
    position = {name: {"tokens": r["position_tokens"], "stream": r["stream"]} for name, r in read.items()}
    streams = {"organic": organic, "synthetic": new}
    b = trainer(tmp_path / "b", streams, data_start=position, **init)
    got_read = b.run()["data"]

    # B's first batch: organic rows 24, 25, ... (A's first batch began at row 0), the new stream from row 0
    batch, info = b.batches(0)
    first_a, _ = a.batches(0)
    targets = np.asarray(batch["targets"])
    assert not np.array_equal(targets, np.asarray(first_a["targets"]))
    for s, (name, stream) in enumerate(streams.items()):
        at = np.flatnonzero(info["stream"] == s)
        assert len(at) > 0, name
        rows = (24 if name == "organic" else 0) + np.arange(len(at))
        np.testing.assert_array_equal(targets[at], stream.rows(rows).training_batch()["targets"], err_msg=name)
    assert {n: (r["start_row"], r["from"]) for n, r in got_read.items()} == {
        "organic": (24, "continued"),
        "synthetic": (0, "new"),
    }
    assert sum(r["rows"] for r in got_read.values()) == 3 * 8
    assert got_read["organic"]["end_row"] == 24 + got_read["organic"]["rows"]

    ckpt = Checkpointer(tmp_path / "a" / "checkpoints", save_every=100, keep=1, async_save=False)
    state, _, _ = ckpt.restore(a._fresh_state())
    ckpt.close()
    train = state["train"]
    lrs = []
    for i in range(3):
        batch, _ = b.batches(i)
        train, metrics = b.step_fn(train, batch)
        lrs.append(float(metrics["learning_rate"]))
    got = jax.device_get(b.state["train"])
    assert int(got.step) == 6
    for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(jax.device_get(train.params))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["learning_rate"] for r in records] == pytest.approx(lrs)
    assert lrs == pytest.approx([3e-3 * s / 8 for s in (3, 4, 5)], rel=1e-5)  # warmup goes on from step 3
    # the epoch counter goes on: step 1 reads organic rows from 24 on, in epoch 24 * 33 // epoch_tokens = 1
    assert records[0]["epoch"] == (24 + int((info["stream"] == 0).sum()) - 1) * (SEQ + 1) // organic.epoch_tokens
    assert records[0]["epoch"] >= 1

    # B killed after its first step and resumed reads the same rows: the same parameters, losses and data read.
    (tmp_path / "b2").mkdir()
    trainer(tmp_path / "b2", streams, num_steps=1, data_start=position, **init).run()
    init = dict(init_params=loaded.params, init_adam=loaded.adam, init_step=loaded.step, init_source=loaded.source)
    resumed = trainer(tmp_path / "b2", streams, data_start=position, **init)
    assert resumed.run()["data"] == got_read
    for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(jax.device_get(resumed.state["train"].params))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    again = [json.loads(line) for line in (tmp_path / "b2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again] == [r["loss"] for r in records]

    # A restart of B with another starting point or data position is refused: both are part of its fingerprint.
    init = dict(init_params=loaded.params, init_adam=loaded.adam, init_step=loaded.step)
    for other, named in (
        (
            trainer(tmp_path / "b", streams, data_start=position, init_source=loaded.source + "-elsewhere", **init),
            r"made with other settings \(init.source: .* then, .* now\)",
        ),
        (
            trainer(tmp_path / "b", streams, data_start={"organic": 0}, init_source=loaded.source, **init),
            r"made with other settings \(data_start: .* then, absent now\)",
        ),
    ):
        with pytest.raises(ValueError, match=named):
            other.run()


def test_a_run_stopped_on_its_plateau_stays_stopped_when_restarted(tmp_path):
    """The loop's round 0 ends at the plateau: a restart (the loop killed before it recorded the stage) must not
    train on past it."""

    def trainer():
        return Trainer(
            models.get_preset("tiny"),
            sharding.make_mesh(sharding.MeshConfig(1, 1, 1), devices=jax.devices()[:1]),
            OptimizerConfig(learning_rate=3e-3, warmup_steps=0),
            TrainerConfig(
                out_dir=str(tmp_path),
                num_steps=20,
                global_batch=8,
                seq_len=SEQ,
                log_every=1,
                eval_every=1,
                eval_batches=1,
                checkpoint_every=100,
                async_checkpoints=False,
                plateau_window=1,
                plateau_min_rel_improvement=1.0,
                stop_on_plateau=True,
                progress=False,
            ),
            train_stream=PackedStream(corpus(0, 120), SEQ + 1, eos_id=EOS, seed=0),
            val_stream=PackedStream(corpus(1, 6), SEQ + 1, eos_id=EOS, seed=0, shuffle=False),
        )

    first = trainer().run()
    assert first["plateaued"] and first["step"] == 2  # 2 evaluations: any gain under 100% is a plateau
    again = trainer().run()
    assert again["plateaued"] and again["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]


def _trainer_with_best(out_dir, num_steps):
    return make_trainer(
        out_dir,
        eval_batches=1,
        num_steps=num_steps,
        mesh=(8, 1, 1),
        lr=3e-2,
        train_docs=12,
        eval_every=1,
        checkpoint_every=3,
        keep_best=True,
    )


def test_keep_best_keeps_the_params_of_the_lowest_validation_loss_and_a_resume_agrees(tmp_path):
    from synpro_jax.train import params_io

    cfg, trainer = _trainer_with_best(tmp_path / "run", 8)
    summary = trainer.run()
    vals = {r["step"]: r["val_loss"] for r in json_lines(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r}
    step = min(vals, key=vals.get)
    assert summary["best"]["step"] == step and summary["best"]["val_loss"] == vals[step]
    # the saved params give the recorded validation loss again: they are that step's
    _, check = _trainer_with_best(tmp_path / "check", 1)
    params, saved_step = params_io.load_params_and_step(cfg, check.mesh, tmp_path / "run" / "best")
    assert saved_step == step
    np.testing.assert_allclose(check.evaluate(params)["val_loss"], vals[step], rtol=1e-5)
    # a run killed after step 8 and resumed from its step-6 checkpoint redoes 7 and 8 and ends with the same best
    _, again = _trainer_with_best(tmp_path / "resumed", 6)
    again.run()
    _, resumed = _trainer_with_best(tmp_path / "resumed", 8)
    assert resumed.run()["best"] == {**summary["best"], "dir": str(tmp_path / "resumed" / "best")}


def json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]
