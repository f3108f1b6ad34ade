"""Storage through etils.epath: the same writers and readers on a local folder and on a gs:// bucket of a real GCS
emulator (fake-gcs-server, tests/gcs_emulator.py), so a run directory on a bucket works like a local one."""

import json
import os

from etils import epath
import jax
import numpy as np
import pytest

from synpro_jax import atomic, models
from synpro_jax.train.metrics import MetricsLog, read_records


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return epath.Path(tmp_path) / "run"
    return request.getfixturevalue("gcs")


def test_a_gs_path_keeps_its_scheme():
    path = epath.Path("gs://b/x") / "y.json"
    assert os.fspath(path) == "gs://b/x/y.json" and atomic.is_remote(path)
    assert not atomic.is_remote(epath.Path("/tmp/x"))


def test_atomic_writes_and_npz(root):
    atomic.write_json(root / "a" / "summary.json", {"step": 3})
    assert json.loads((root / "a" / "summary.json").read_text()) == {"step": 3}
    atomic.write_text(root / "a" / "summary.json", "{}")  # replaced whole
    assert (root / "a" / "summary.json").read_text() == "{}"
    atomic.write_file(root / "scores.npz", lambda tmp: np.savez(tmp, x=np.arange(4)), suffix=".npz")
    with atomic.load_npz(root / "scores.npz") as z:
        np.testing.assert_array_equal(z["x"], np.arange(4))
    assert sorted(p.name for p in root.iterdir()) == ["a", "scores.npz"]  # no temp files left behind


def test_publish_dir_replaces_a_directory_whole(root):
    def fill(files):
        def write(tmp):
            for name, text in files.items():
                (tmp / name).write_text(text)

        return write

    atomic.publish_dir(root / "export", fill({"config.json": "1", "model.bin": "a", "old.txt": "x"}))
    atomic.publish_dir(root / "export", fill({"config.json": "2", "model.bin": "b"}), last=("config.json",))
    assert sorted(p.name for p in (root / "export").iterdir()) == ["config.json", "model.bin"]
    assert (root / "export" / "config.json").read_text() == "2"
    assert [p.name for p in root.iterdir()] == ["export"]


def test_metrics_log_on_a_bucket_resumes_like_a_local_one(root):
    log = MetricsLog(root, resume_step=0, flush_s=0.0)
    for step in range(1, 5):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    assert [r["step"] for r in read_records(root / "metrics.jsonl")] == [1, 2, 3, 4]
    assert list((root / "tensorboard").glob("events.out.tfevents.*"))
    log = MetricsLog(root, resume_step=2)  # a resume from the step-2 checkpoint redoes 3 and 4
    log.write({"step": 3, "loss": 0.5})
    log.close()
    assert [r["step"] for r in read_records(root / "metrics.jsonl")] == [1, 2, 3]


def test_hf_export_round_trips(root):
    from synpro_jax.models import hf

    cfg = models.get_preset("tiny")
    params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    hf.save(cfg, params, root / "hf")
    assert (root / "hf" / "config.json").exists()
    cfg2, loaded = hf.load(root / "hf")
    assert cfg2.d_model == cfg.d_model
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_sources_glob_and_read_a_bucket(root):
    from synpro_jax.data.sources import expand_paths, open_source

    for i in range(2):
        atomic.write_text(
            root / "shards" / f"part-{i}.jsonl", "".join(json.dumps({"text": f"doc {i}.{j}"}) + "\n" for j in range(3))
        )
    atomic.write_text(root / "shards" / "notes.txt", "not a shard")
    files = expand_paths(os.fspath(root / "shards" / "*.jsonl"))
    assert [f.name for f in files] == ["part-0.jsonl", "part-1.jsonl"]
    docs = [d.text for d in open_source(os.fspath(root / "shards" / "*.jsonl"))]
    assert docs == [f"doc {i}.{j}" for i in range(2) for j in range(3)]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_paths(os.fspath(root / "shards" / "*.parquet"))


@pytest.fixture(scope="module")
def synthesis_workspace(tmp_path_factory):
    from bulk_job import make_workspace

    return make_workspace(tmp_path_factory.mktemp("synthesis") / "ws")


def test_synthesis_on_a_bucket_resumes_a_killed_shard(root, synthesis_workspace):
    """A bucket cannot append: the shard in progress is one object per batch, and a resumed job continues it."""
    from bulk_job import DOCUMENTS

    from synpro_jax.data.vocab import load_vocabulary
    from synpro_jax.generation.synthesize import SynthesisConfig, Synthesizer
    from synpro_jax.models import hf

    ws = synthesis_workspace
    cfg, params = hf.load(ws / "model")
    settings = SynthesisConfig(
        operation="rephrase", max_prompt_tokens=720, max_new_tokens=4, batch_size=4, keep_unparsed=True
    )

    def job(batches: int | None = None) -> Synthesizer:
        synth = Synthesizer(cfg, params, load_vocabulary(str(ws / "sp.model")), settings, generator="gen")
        write = synth._write

        def write_until_killed(append, records):
            if batches is not None and len(written) == batches:
                raise KeyboardInterrupt  # the job stops here, mid-shard
            written.append(len(records))
            write(append, records)

        synth._write = write_until_killed
        return synth

    out, written = root / "synthesis", []
    with pytest.raises(KeyboardInterrupt):
        job(batches=2).run([str(ws / "organic.jsonl")], out, progress=False)
    partial = out / "organic.jsonl.partial"
    if atomic.is_remote(out):
        assert sorted(p.name for p in partial.iterdir()) == ["000000000.jsonl", "000000001.jsonl"]
    else:
        assert len(partial.read_text().splitlines()) == sum(written)
    manifest = job().run([str(ws / "organic.jsonl")], out, progress=False)
    assert manifest["shards"][0]["resumed"] == sum(written[:2]) > 0 and not partial.exists()
    ids = [json.loads(line)["source_id"] for line in (out / "organic.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"organic.jsonl:{i}" for i in range(1, DOCUMENTS + 1))
    assert json.loads((out / "synthesis.json").read_text())["shards"][0]["shard"] == "organic.jsonl"
    # Killed after the finished part was written but before its batches were removed: a rerun removes them.
    leftover = partial / "000000000.jsonl" if atomic.is_remote(out) else partial
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text('{"source_id": "organic.jsonl:1"}\n')
    assert job().run([str(ws / "organic.jsonl")], out, progress=False)["shards"][0]["skipped"] == "finished earlier"
    assert not partial.exists()


def test_tensorboard_events_reach_a_bucket_and_the_loop_board_starts_afresh(root):
    from synpro_jax.loop.report import Board
    from synpro_jax.train.metrics import TensorBoard

    board = TensorBoard(root / "tensorboard" / "synpro")
    board.add_scalar("pretrain/loss", 2.5, 1)
    board.flush()  # the event file is there before the writer closes (a long stage)
    events = list((root / "tensorboard" / "synpro").glob("events.out.tfevents.*"))
    assert len(events) == 1
    board.close()
    assert b"pretrain/loss" in events[0].read_bytes()
    loop_board = Board(root, ["synpro"], enabled=True)  # a resumed loop rebuilds its runs' boards whole
    loop_board.close()
    rebuilt = list((root / "tensorboard" / "synpro").iterdir())
    assert len(rebuilt) == 1 and b"pretrain/loss" not in rebuilt[0].read_bytes()


def test_a_partial_shard_keeps_only_whole_records_and_becomes_the_finished_part(root):
    from synpro_jax.generation.synthesize import _Partial

    final = root / "synthesis" / "x.jsonl"
    final.parent.mkdir(parents=True, exist_ok=True)
    part = _Partial(final)
    with part.appender() as append:
        append('{"source_id": "a"}\n')
        append('{"source_id": "b"}\n')
    damaged = '{"source_id": "b"}\n{not json\n'  # a line that cannot be read: its document is redone
    if part.remote:
        (part.path / "000000001.jsonl").write_text(damaged)
    else:
        part.path.write_text('{"source_id": "a"}\n' + damaged)
    assert [json.loads(line)["source_id"] for line in part.read({})] == ["a", "b"]
    with part.appender() as append:
        append('{"source_id": "c"}\n')
    part.finish()
    assert final.read_text().splitlines() == ['{"source_id": "a"}', '{"source_id": "b"}', '{"source_id": "c"}']
    assert not part.exists()
