"""seqio Task/Mixture registration and the trainer's streams built from the same definitions."""

import json

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from synpro_jax.data import tasks, vocab as vocab_lib  # noqa: E402

WORDS = "the a model learns text from data every epoch while rates mix organic and synthetic streams".split()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(0)
    organic = root / "organic.jsonl"
    with organic.open("w") as fh:
        for i in range(40):
            fh.write(json.dumps({"text": " ".join(rng.choice(WORDS, size=rng.integers(5, 30)))}) + "\n")
        fh.write("{broken\n")
    shard = root / "rephrase-00000.jsonl"
    tasks.write_synthetic_shard(shard, [
        {"source_id": f"organic.jsonl:{i + 1}", "operation": "rephrase", "generator_step": 300,
         "text": "Here is a paraphrased version: " + " ".join(rng.choice(WORDS, size=20))} for i in range(15)])
    sp = vocab_lib.train_sentencepiece((" ".join(rng.choice(WORDS, size=50)) for _ in range(200)),
                                       root / "sp.model", vocab_size=280)
    return root, organic, shard, sp


def config(workspace, **kw):
    root, organic, shard, sp = workspace
    base = dict(corpus="toy", organic=(str(organic),), vocabulary=str(sp), synthetic=(f"rephrase:1:{shard}",),
                validation_docs=5, cache_dir=str(root / "cache"), block_rows=64)
    return tasks.DataConfig(**{**base, **kw})


def test_registers_named_tasks_and_mixture_with_token_rates(workspace):
    streams = tasks.build_streams(config(workspace), seq_len=32, progress=False)
    assert streams.mixture == "synpro_toy_mix"
    mix = seqio.get_mixture_or_task("synpro_toy_mix")
    names = sorted(t.name for t in mix.tasks)
    assert names == ["synpro_toy_organic", "synpro_toy_rephrase_r1"]
    info = streams.info["tasks"]
    total = sum(t["tokens"] for t in info.values())
    for name, t in info.items():
        assert mix.get_rate(seqio.get_mixture_or_task(name)) == t["tokens"]
        assert abs(t["rate"] - t["tokens"] / total) <= 1 / 64  # rounded to whole rows per block
    assert info["synpro_toy_organic"]["documents"] == 35  # 40 good lines, 5 held out
    assert "1 documents kept" not in streams.info["reports"]["synpro_toy_organic"]
    assert "malformed 1" in streams.info["reports"]["synpro_toy_organic"]


def test_seqio_dataset_matches_the_trainers_tokens(workspace):
    tasks.build_streams(config(workspace), seq_len=32, progress=False)
    task = seqio.get_mixture_or_task("synpro_toy_rephrase_r1")
    vocab = task.output_features["targets"].vocabulary
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False)
    seqio_docs = [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]
    ours = [vocab.encode(d.text) + [vocab.eos_id] for d in tasks.task_documents("synpro_toy_rephrase_r1")]
    assert seqio_docs == ours and len(ours) == 15


def test_explicit_rates_and_data_bound_budget(workspace):
    streams = tasks.build_streams(config(workspace, mixing="organic=3,rephrase_r1=1", organic_budget_tokens=200),
                                  seq_len=16, progress=False)
    info = streams.info["tasks"]
    assert info["synpro_toy_organic"]["tokens"] == 200
    assert info["synpro_toy_organic"]["rate"] == pytest.approx(0.75, abs=1 / 64)
    rows, which = streams.train.rows(range(128))
    assert (which == 0).sum() == 96
    assert streams.validation is not None and streams.info["validation_tokens"] > 0
    with pytest.raises(ValueError, match="no rate for 'rephrase_r1'"):
        tasks.build_streams(config(workspace, mixing="organic=1"), seq_len=16, progress=False)


def test_config_errors(workspace):
    with pytest.raises(ValueError, match="OPERATION:ROUND:GLOB"):
        config(workspace, synthetic=("rephrase.jsonl",))
    with pytest.raises(ValueError, match="name 'Toy-Corpus'"):
        config(workspace, corpus="Toy-Corpus")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        tasks.build_streams(config(workspace, organic=("/nonexistent/*.jsonl",)), seq_len=16, progress=False)
