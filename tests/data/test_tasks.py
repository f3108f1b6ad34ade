"""seqio Task/Mixture registration; the registered Mixture is, token for token, what the trainer trains on."""

import json
import os

import jax
import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from synpro_jax import sharding  # noqa: E402
from synpro_jax.data import streams as streams_lib  # noqa: E402
from synpro_jax.data import tasks
from synpro_jax.data import vocab as vocab_lib
from synpro_jax.data.config import DataConfig, SyntheticShards  # noqa: E402
from synpro_jax.data.pipeline import TrainBatches, continue_streams  # noqa: E402

WORDS = "the a model learns text from data every epoch while rates mix organic and synthetic streams".split()


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(0)
    organic = root / "organic.jsonl"
    with organic.open("w") as fh:
        for i in range(40):
            fh.write(json.dumps({"text": " ".join(rng.choice(WORDS, size=rng.integers(5, 30)))}) + "\n")
        fh.write("{broken\n")
        fh.write(json.dumps({"text": "\u200b"}) + "\n")  # a zero-width space: encodes to no tokens
    rephrase = root / "rephrase-00000.jsonl"
    write_jsonl(
        rephrase,
        [
            {
                "source_id": f"organic.jsonl:{i + 1}",
                "operation": "rephrase",
                "generator_step": 300,
                "text": "Here is a paraphrased version: " + " ".join(rng.choice(WORDS, size=20)),
            }
            for i in range(15)
        ],
    )
    reformat = root / "reformat-00000.jsonl"
    write_jsonl(
        reformat,
        [
            {
                "source_id": f"organic.jsonl:{i + 1}",
                "operation": "reformat",
                "text": "- Topic: data Content: " + " ".join(rng.choice(WORDS, size=12)),
            }
            for i in range(12)
        ],
    )
    sp = vocab_lib.train_sentencepiece(
        (" ".join(rng.choice(WORDS, size=50)) for _ in range(200)), root / "sp.model", vocab_size=280
    )
    return root, organic, rephrase, reformat, sp


def config(workspace, **kw):
    root, organic, rephrase, reformat, sp = workspace
    base = dict(
        corpus="toy",
        organic=(str(organic),),
        vocabulary=str(sp),
        synthetic=(("rephrase", 1, str(rephrase)),),
        validation_docs=5,
        cache_dir=str(root / "cache"),
        block_rows=64,
    )
    return DataConfig(**{**base, **kw})


def test_registers_named_tasks_and_mixture_with_token_rates(workspace):
    streams = streams_lib.build_streams(config(workspace), seq_len=32, progress=False)
    assert streams.mixture == "synpro_toy_mix"
    mix = seqio.get_mixture_or_task("synpro_toy_mix")
    assert isinstance(mix, tasks.PackedMixture)
    names = sorted(t.name for t in mix.tasks)
    assert names == ["synpro_toy_organic", "synpro_toy_rephrase_r1"]
    info = streams.info["tasks"]
    total = sum(t["tokens"] for t in info.values())
    for name, t in info.items():
        assert mix.get_rate(seqio.get_mixture_or_task(name)) == t["tokens"]
        assert abs(t["rate"] - t["tokens"] / total) <= 1 / 64  # rounded to whole rows per block
    assert info["synpro_toy_organic"]["documents"] == 35  # 40 good lines, 5 held out
    report = streams.info["reports"]["synpro_toy_organic"]
    assert "malformed 1" in report
    # a document that tokenizes to nothing is counted as bad input with its file:line, not dropped silently
    assert "empty 1" in report and "organic.jsonl:42" in report and "40 documents kept" in report


def test_tasks_hold_exactly_the_trainers_documents(workspace):
    streams = streams_lib.build_streams(config(workspace, organic_budget_tokens=150), seq_len=32, progress=False)
    vocab = seqio.get_mixture_or_task("synpro_toy_organic").output_features["targets"].vocabulary
    task = seqio.get_mixture_or_task("synpro_toy_rephrase_r1")
    seqio_docs = [
        ex["targets"].tolist() for ex in task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator()
    ]
    root, organic, rephrase, *_ = workspace
    texts = [json.loads(line)["text"] for line in rephrase.read_text().splitlines()]
    assert seqio_docs == [vocab.encode(t) + [vocab.eos_id] for t in texts] and len(texts) == 15
    assert [d.tokens.tolist() + [vocab.eos_id] for d in tasks.task_documents("synpro_toy_rephrase_r1")] == seqio_docs
    organic = seqio.get_mixture_or_task("synpro_toy_organic")
    train = [ex["targets"] for ex in organic.get_dataset(None, split="train", shuffle=False).as_numpy_iterator()]
    assert sum(len(t) - 1 for t in train) == 150  # the data-bound budget, not the whole corpus
    val = list(organic.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert len(val) == 5 and streams.info["validation_docs"] == 5


def _mixture_rows(name, seq_len, n, shard=None, start_row=0):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        {"targets": seq_len}, split="train", shard_info=shard, start_row=start_row
    )
    return [ex for ex, _ in zip(ds.as_numpy_iterator(), range(n))]


def test_seqio_mixture_is_the_trainers_input_token_for_token(workspace):
    root, organic, rephrase, reformat, sp = workspace
    cfg = config(
        workspace,
        synthetic=(SyntheticShards("rephrase", 1, str(rephrase)), ("reformat", 2, str(reformat))),
        organic_budget_tokens=300,
        mixing={"organic": 2, "rephrase_r1": 1, "reformat_r2": 1},
    )
    streams = streams_lib.build_streams(cfg, seq_len=16, progress=False)
    mix = streams.train.mixture
    assert mix.task_names == ["synpro_toy_organic", "synpro_toy_rephrase_r1", "synpro_toy_reformat_r2"]
    stream = mix.stream(16)
    epochs_before = [s.epoch_tokens for s in stream.streams]

    # 1. seqio's rows, unsharded, are the block-mixed packed rows, past several data-bound epochs
    n = 320
    rows = _mixture_rows("synpro_toy_mix", 16, n)
    ref, which = stream.rows(np.arange(n))
    ref_batch = ref.training_batch()
    for f in ("inputs", "targets", "segment_ids", "positions", "loss_mask"):
        np.testing.assert_array_equal(np.stack([r[f] for r in rows]), ref_batch[f], err_msg=f)
    np.testing.assert_array_equal([r["task"] for r in rows], which)
    assert max(r["epoch"] for r in rows if r["task"] == 0) >= 2  # organic repeated: data-bound epochs
    assert epochs_before == [s.epoch_tokens for s in stream.streams]

    # 2. the trainer's batches on a 2x4 mesh (through seqio, sharded per row block) equal those rows
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 4, 1))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    batches = TrainBatches(streams.train, 8, batch_sharding)
    assert batches.reads_seqio
    for step in range(3):
        batch, info = batches(step)
        np.testing.assert_array_equal(np.asarray(batch["targets"]), ref_batch["targets"][step * 8 : (step + 1) * 8])
        np.testing.assert_array_equal(info["stream"], which[step * 8 : (step + 1) * 8])

    # 3. shard p of P holds rows p, p+P, ...; a resumed shard (start_row) continues exactly
    for p in range(3):
        part = _mixture_rows("synpro_toy_mix", 16, 20, seqio.ShardInfo(p, 3))
        np.testing.assert_array_equal([r["targets"] for r in part], ref_batch["targets"][p::3][:20])
        later = _mixture_rows("synpro_toy_mix", 16, 5, seqio.ShardInfo(p, 3), start_row=71)
        np.testing.assert_array_equal([r["targets"] for r in later], ref_batch["targets"][p::3][71:76])
    jumped, _ = batches(11)  # a resume at step 11 reopens the dataset there
    np.testing.assert_array_equal(np.asarray(jumped["targets"]), ref_batch["targets"][88:96])

    # 4. a stage continuing this one's data position reads each stream on from its rows, through seqio as at
    # random access, and the registered Mixture still reads from row 0
    read = stream.detached().report(12 * 8)
    train, counting, how = continue_streams(
        streams.train, {n: {"tokens": r["position_tokens"], "stream": r["stream"]} for n, r in read.items()}
    )
    assert train.starts == tuple(r["end_row"] for r in read.values()) and any(train.starts)
    assert set(how.values()) == {"continued"}
    cont, cont_which = stream.starting_at(train.starts).rows(np.arange(24))
    later = TrainBatches(train, 8, batch_sharding)
    assert later.reads_seqio
    for step in range(3):
        batch, info = later(step)
        np.testing.assert_array_equal(np.asarray(batch["targets"]), cont.training_batch()["targets"][step * 8 :][:8])
        np.testing.assert_array_equal(info["epochs"], cont.epochs[step * 8 : (step + 1) * 8])
    for s, packed in enumerate(stream.streams):
        at = np.flatnonzero(cont_which == s)
        np.testing.assert_array_equal(cont.tokens[at], packed.rows(train.starts[s] + np.arange(len(at))).tokens)
    assert counting.report(24) == stream.starting_at(train.starts).detached().report(24)
    np.testing.assert_array_equal(
        [r["targets"] for r in _mixture_rows("synpro_toy_mix", 16, 8)], ref_batch["targets"][:8]
    )


def test_token_shares_equal_configured_rates(workspace):
    root, organic, rephrase, reformat, sp = workspace
    rates = {"organic": 0.5, "rephrase_r1": 0.3, "reformat_r2": 0.2}
    cfg = config(
        workspace,
        synthetic=(("rephrase", 1, str(rephrase)), ("reformat", 2, str(reformat))),
        mixing=rates,
        block_rows=256,
    )
    streams_lib.build_streams(cfg, seq_len=16, progress=False)
    rows = _mixture_rows("synpro_toy_mix", 16, 2000)
    tokens = np.zeros(3)
    for r in rows:
        tokens[r["task"]] += r["targets"].size
    shares = tokens / tokens.sum()
    for share, rate in zip(shares, rates.values()):
        assert abs(share - rate) < 0.01, (shares, rates)


def test_explicit_rates_and_data_bound_budget(workspace):
    streams = streams_lib.build_streams(
        config(workspace, mixing={"organic": 3, "rephrase_r1": 1}, organic_budget_tokens=200),
        seq_len=16,
        progress=False,
    )
    info = streams.info["tasks"]
    assert info["synpro_toy_organic"]["tokens"] == 200
    assert info["synpro_toy_organic"]["rate"] == pytest.approx(0.75, abs=1 / 64)
    rows, which = streams.train.rows(range(128))
    assert (which == 0).sum() == 96
    assert streams.validation is not None and streams.info["validation_tokens"] > 0
    with pytest.raises(ValueError, match="no rate for 'rephrase_r1'"):
        streams_lib.build_streams(config(workspace, mixing={"organic": 1}), seq_len=16, progress=False)
    with pytest.raises(ValueError, match=r"names \['rephrase_r9'\]"):
        streams_lib.build_streams(
            config(workspace, mixing={"organic": 1, "rephrase_r1": 1, "rephrase_r9": 1}), seq_len=16, progress=False
        )


def test_config_takes_gin_native_values_and_names_the_knob(workspace):
    root, organic, rephrase, reformat, sp = workspace
    as_dict = config(workspace, synthetic=[{"operation": "rephrase", "round": 1, "files": str(rephrase)}])
    as_tuple = config(workspace, synthetic=[("rephrase", 1, str(rephrase))])
    assert as_dict.synthetic == as_tuple.synthetic == (SyntheticShards("rephrase", 1, str(rephrase)),)
    with pytest.raises(ValueError, match=r"expected \(operation, round, files\)"):
        config(workspace, synthetic=("rephrase.jsonl",))
    with pytest.raises(ValueError, match="names a round twice"):
        config(workspace, synthetic=[("rephrase", 1, "a"), ("rephrase", 1, "b")])
    with pytest.raises(ValueError, match="DataConfig.mixing='organic=3,rephrase_r1=1'"):
        config(workspace, mixing="organic=3,rephrase_r1=1")
    with pytest.raises(ValueError, match="corpus='Toy-Corpus'"):
        config(workspace, corpus="Toy-Corpus")
    with pytest.raises(ValueError, match="PassthroughVocabulary"):
        vocab_lib.load_vocabulary("passthrough:256:1")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        streams_lib.build_streams(config(workspace, organic=("/nonexistent/*.jsonl",)), seq_len=16, progress=False)


def test_mixture_get_dataset_errors(workspace):
    streams_lib.build_streams(config(workspace), seq_len=16, progress=False)
    mix = seqio.get_mixture_or_task("synpro_toy_mix")
    with pytest.raises(ValueError, match="sequence_length"):
        mix.get_dataset(None)
    with pytest.raises(ValueError, match="num_epochs=None"):
        mix.get_dataset({"targets": 16}, num_epochs=1)


def test_trained_sentencepiece_vocabulary_is_cached(workspace, tmp_path):
    root, organic, *_ = workspace
    cfg = DataConfig(
        corpus="spt",
        organic=(str(organic),),
        vocabulary=vocab_lib.TrainedSentencePiece(290),
        validation_docs=0,
        cache_dir=str(tmp_path),
    )
    streams = streams_lib.build_streams(cfg, seq_len=16, progress=False)
    model = tmp_path / "spt_sp290.model"
    assert model.exists() and streams.info["vocab_size"] >= 290
    mtime = os.path.getmtime(model)
    streams_lib.build_streams(cfg, seq_len=16, progress=False)
    assert os.path.getmtime(model) == mtime


def test_validation_sources_and_a_budget_in_corpus_order(workspace, tmp_path):
    """A fixed validation file replaces the held-out split (every organic document trains), and the budget in
    corpus order takes the first documents, each larger budget a superset (the demo's oracle runs)."""
    root, organic, *_ = workspace
    heldout = tmp_path / "heldout.jsonl"
    write_jsonl(heldout, [{"id": f"h{i}", "text": " ".join(WORDS[i : i + 6])} for i in range(7)])
    cfg = config(workspace, synthetic=(), validation=str(heldout), validation_docs=5, budget_order="corpus")
    vocab, train, val, _ = streams_lib.organic_split(cfg, progress=False)
    assert val.num_docs == 7 and train.num_docs == 40  # all readable organic documents train
    small = streams_lib.organic_split(
        config(workspace, synthetic=(), validation=str(heldout), budget_order="corpus", organic_budget_tokens=100),
        progress=False,
    )[1]
    large = streams_lib.organic_split(
        config(workspace, synthetic=(), validation=str(heldout), budget_order="corpus", organic_budget_tokens=200),
        progress=False,
    )[1]
    assert list(small.doc_ids) == list(train.doc_ids)[: small.num_docs]
    assert list(large.doc_ids)[: small.num_docs - 1] == list(small.doc_ids)[:-1]
    assert small.num_tokens == 100 and large.num_tokens == 200
    with pytest.raises(ValueError, match="DataConfig.budget_order='first'"):
        config(workspace, budget_order="first")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        streams_lib.organic_split(config(workspace, validation="/nonexistent/*.jsonl"), progress=False)
