"""Bulk synthesis: records per document, the stated rules for long and empty documents, kill-and-resume."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import seqio

from synpro_jax import models
from synpro_jax.data import tasks
from synpro_jax.data.vocab import load_vocabulary, train_sentencepiece
from synpro_jax.generation import synthesize
from synpro_jax.models import hf

HERE = Path(__file__).resolve().parent
WORDS = "the a cat dog river stone light quickly under over green blue seven runs sleeps reads map city".split()


def sentence(rng):
    return " ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "."


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A random tiny generator saved as an HF directory, a SentencePiece vocabulary and three organic shards."""
    root = tmp_path_factory.mktemp("synthesis")
    rng = np.random.default_rng(0)
    shards = []
    for s in range(3):
        path = root / "organic" / f"part{s}.jsonl"
        path.parent.mkdir(exist_ok=True)
        lines = [json.dumps({"text": " ".join(sentence(rng) for _ in range(rng.integers(1, 5)))}) for _ in range(5)]
        if s == 1:
            lines.insert(2, json.dumps({"text": "   "}))  # empty: skipped by the reader and counted
            lines.insert(4, json.dumps({"text": "Long. " * 400}))  # too long even after the 7,000-char cut
        path.write_text("\n".join(lines) + "\n")
        shards.append(path)
    texts = [json.loads(line)["text"] for p in shards for line in p.read_text().splitlines()]
    train_sentencepiece(texts + ["Here is the rewritten document: Rewrite"], root / "sp.model", 320)
    cfg = models.get_preset("tiny").replace(vocab_size=320, max_seq_len=2048)
    hf.save(cfg, models.init_params(cfg, jax.random.key(1)), root / "generator")
    return root, shards


def run_job(root, out, kill_after, shards):
    cmd = [sys.executable, str(HERE / "synthesis_job.py"), str(root / "generator"), str(root / "sp.model"),
           str(out), str(kill_after), *map(str, shards)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_killed_job_resumes_with_every_source_id_exactly_once(workspace, tmp_path):
    root, shards = workspace
    out = tmp_path / "rephrase"
    # 2-doc batches: part0 is 3 batches, part1 2 batches + a too-long record; die while writing part1's 2nd batch.
    killed = run_job(root, out, 4, shards)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "part0.jsonl").exists() and (out / "part1.jsonl.partial").exists()
    assert not (out / "part2.jsonl").exists()
    part0 = (out / "part0.jsonl").read_text()
    before = {json.loads(x)["source_id"]: x for x in (out / "part1.jsonl.partial").read_text().splitlines()}
    with (out / "part1.jsonl.partial").open("a") as fh:  # as if killed mid-line
        fh.write('{"source_id": "part1.jsonl:99", "operation": "reph')

    done = run_job(root, out, 0, shards)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(out.glob("*.partial")) and (out / "part0.jsonl").read_text() == part0  # finished: untouched
    records = list(synthesize.iter_records(out))
    ids = [r["source_id"] for r in records]
    expected = [f"part{s}.jsonl:{i}" for s in range(3) for i in range(1, 8 if s == 1 else 6)
                if not (s == 1 and i == 3)]  # part1 line 3 is the empty document
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    after = {r["source_id"]: r for r in records}
    for doc_id, line in before.items():  # what the killed run wrote is kept, not regenerated
        assert json.loads(line) == after[doc_id]
    assert after["part1.jsonl:5"]["status"] == "too_long" and after["part1.jsonl:5"]["text"] == ""
    manifest = json.loads((out / "synthesis.json").read_text())
    assert manifest["data_config_synthetic"] == f"rephrase:1:{out}/*.jsonl"
    assert [s.get("skipped") for s in manifest["shards"]] == ["finished earlier", None, None]
    assert "empty 1" in manifest["shards"][1]["read"]


def test_records_and_seqio_task(workspace, tmp_path):
    root, shards = workspace
    cfg, params = hf.load(root / "generator")
    vocab = load_vocabulary(str(root / "sp.model"))
    settings = synthesize.SynthesisConfig(operation="reformat", round=2, max_prompt_tokens=1000, max_new_tokens=6,
                                          batch_size=4, keep_unparsed=True)
    synth = synthesize.Synthesizer(cfg, params, vocab, settings, generator="g",
                                   generator_step=7)
    manifest = synth.run([str(shards[0])], tmp_path, progress=False)
    records = list(synthesize.iter_records(tmp_path))
    assert len(records) == 5 and manifest["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    for r in records:
        assert r["operation"] == "reformat" and r["round"] == 2 and r["generator_step"] == 7
        assert r["status"] in ("unparsed", "no_answer") and 1 <= r["completion_tokens"] <= 6
    # Same seed, same documents: the same samples, whatever the batching.
    again = synthesize.Synthesizer(cfg, params, vocab,
                                   synthesize.SynthesisConfig(**{**settings.__dict__, "batch_size": 3}))
    again.run([str(shards[0])], tmp_path / "again", progress=False)
    assert [r["output"] for r in synthesize.iter_records(tmp_path / "again")] == [r["output"] for r in records]

    opener = tasks.register_synthetic_task("unit", "reformat", 2, str(tmp_path / "*.jsonl"), vocab)
    task = seqio.get_mixture_or_task("synpro_unit_reformat_r2")
    kept = [r for r in records if r["text"]]
    got = list(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    assert len(got) == len(kept) == sum(1 for _ in opener())
    assert got[0]["targets"].tolist() == list(vocab.encode(kept[0]["text"])) + [vocab.eos_id]


def test_config_errors_name_the_knob(workspace):
    root, _ = workspace
    with pytest.raises(ValueError, match="SynthesisConfig.operation='summary'"):
        synthesize.SynthesisConfig(operation="summary")
    with pytest.raises(ValueError, match="SynthesisConfig.batch_size=0"):
        synthesize.SynthesisConfig(operation="rephrase", batch_size=0)
    cfg, params = hf.load(root / "generator")
    with pytest.raises(ValueError, match="max_new_tokens=2048 exceeds the generator's max_seq_len=2048"):
        synthesize.Synthesizer(cfg, params, load_vocabulary(str(root / "sp.model")),
                               synthesize.SynthesisConfig(operation="rephrase"))


def test_synthesize_cli(workspace, tmp_path):
    from test_cli import synpro

    root, shards = workspace
    out = tmp_path / "cli"
    flags = [f"--gin.GENERATOR='{root / 'generator'}'", f"--gin.SHARDS=['{shards[0]}']", f"--gin.SYNTH_OUT='{out}'",
             "--gin.OPERATION='reformat'", f"--gin.synpro.synthesize.vocabulary='{root / 'sp.model'}'",
             "--gin.synpro.SynthesisConfig.max_prompt_tokens=1000", "--gin.synpro.SynthesisConfig.max_new_tokens=4",
             "--gin.synpro.SynthesisConfig.batch_size=8", "--gin.synpro.synthesize.mesh=@synpro.MeshConfig()",
             "--gin.synpro.MeshConfig.data=8"]
    done = synpro("synthesize", "--gin_file=gin/runs/synthesize.gin", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"reformat:1:{out}/*.jsonl" in done.stdout
    assert len(list(synthesize.iter_records(out))) == 5 and (out / "config.gin").exists()
    missing = synpro("synthesize", "--gin_file=gin/runs/synthesize.gin")
    assert missing.returncode == 2 and "GENERATOR" in missing.stderr
