"""Bulk synthesis: records per document, the stated rules for long and empty documents, kill-and-resume, and
resumes that refuse to mix generators, seeds, sampling knobs or prompt versions."""

import json
from pathlib import Path
import re
import shutil
import subprocess
import sys

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
            lines.insert(4, json.dumps({"text": "Long. " * 400}))  # over the 1,000-token prompt: its middle is cut
        path.write_text("\n".join(lines) + "\n")
        shards.append(path)
    texts = [json.loads(line)["text"] for p in shards for line in p.read_text().splitlines()]
    train_sentencepiece(texts + ["Here is the rewritten document: Rewrite"], root / "sp.model", 320)
    cfg = models.get_preset("tiny").replace(vocab_size=320, max_seq_len=2048)
    hf.save(cfg, models.init_params(cfg, jax.random.key(1)), root / "generator")
    return root, shards


def run_job(root, out, kill_after, shards, batching="continuous"):
    cmd = [
        sys.executable,
        str(HERE / "synthesis_job.py"),
        str(root / "generator"),
        str(root / "sp.model"),
        str(out),
        str(kill_after),
        batching,
        *map(str, shards),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a real process killed and rerun; test_storage.py resumes a killed shard in process
@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_killed_job_resumes_with_every_source_id_exactly_once(workspace, tmp_path, batching):
    root, shards = workspace
    out = tmp_path / "rephrase"
    # part0 holds 5 documents, part1 6: die before the write that would pass 7 records, inside part1.
    killed = run_job(root, out, 7, shards, batching)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "part0.jsonl").exists() and (out / "part1.jsonl.partial").exists()
    assert not (out / "part2.jsonl").exists()
    part0 = (out / "part0.jsonl").read_text()
    before = {json.loads(x)["source_id"]: x for x in (out / "part1.jsonl.partial").read_text().splitlines()}
    with (out / "part1.jsonl.partial").open("a") as fh:  # as if killed mid-line
        fh.write('{"source_id": "part1.jsonl:99", "operation": "reph')

    done = run_job(root, out, 0, shards, batching)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(out.glob("*.partial")) and (out / "part0.jsonl").read_text() == part0  # finished: untouched
    records = list(synthesize.iter_records(out))
    ids = [r["source_id"] for r in records]
    expected = [
        f"part{s}.jsonl:{i}" for s in range(3) for i in range(1, 8 if s == 1 else 6) if not (s == 1 and i == 3)
    ]  # part1 line 3 is the empty document
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    after = {r["source_id"]: r for r in records}
    for doc_id, line in before.items():  # what the killed run wrote is kept, not regenerated
        assert json.loads(line) == after[doc_id]
    long = after["part1.jsonl:5"]  # cut in the middle to fit, not dropped
    assert long["status"] != "too_long" and long["source_cut_tokens"] > 0 and long["prompt_tokens"] == 1000
    assert all(r["status"] != "too_long" for r in records)
    manifest = json.loads((out / "synthesis.json").read_text())
    assert manifest["data_config_synthetic"] == f"('rephrase', 1, '{out}/*.jsonl')"
    assert [s.get("skipped") for s in manifest["shards"]] == ["finished earlier", None, None]
    assert "empty 1" in manifest["shards"][1]["read"]


def test_records_and_seqio_task(workspace, tmp_path):
    root, shards = workspace
    cfg, params = hf.load(root / "generator")
    vocab = load_vocabulary(str(root / "sp.model"))
    settings = synthesize.SynthesisConfig(
        operation="reformat", round=2, max_prompt_tokens=1000, max_new_tokens=6, batch_size=4, keep_unparsed=True
    )
    synth = synthesize.Synthesizer(cfg, params, vocab, settings, generator="g", generator_step=7)
    manifest = synth.run([str(shards[0])], tmp_path, progress=False)
    records = list(synthesize.iter_records(tmp_path))
    assert len(records) == 5 and manifest["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    for r in records:
        assert r["operation"] == "reformat" and r["round"] == 2 and r["generator_step"] == 7
        assert r["status"] in ("unparsed", "no_answer") and 1 <= r["completion_tokens"] <= 6
    # Same seed, same documents: the same samples, whatever the batching.
    again = synthesize.Synthesizer(
        cfg, params, vocab, synthesize.SynthesisConfig(**{**settings.__dict__, "batch_size": 3})
    )
    again.run([str(shards[0])], tmp_path / "again", progress=False)
    assert [r["output"] for r in synthesize.iter_records(tmp_path / "again")] == [r["output"] for r in records]

    opener = tasks.register_synthetic_task("unit", "reformat", 2, str(tmp_path / "*.jsonl"), vocab)
    task = seqio.get_mixture_or_task("synpro_unit_reformat_r2")
    kept = [r for r in records if r["text"]]
    got = list(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    assert len(got) == len(kept) == sum(1 for _ in opener())
    assert got[0]["targets"].tolist() == list(vocab.encode(kept[0]["text"])) + [vocab.eos_id]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuous_and_static_batching_write_the_same_records(workspace, tmp_path, temperature):
    """Documents streamed through 2 refilled slots give the records 3-document static batches give: the same
    content, in document order, each document once (greedy, and sampling: each document's stream is its own)."""
    root, shards = workspace
    cfg, params = hf.load(root / "generator")
    params = jax.tree.map(lambda x: 3 * x if x.ndim >= 2 else x, params)  # sharper logits: varied greedy text
    vocab = load_vocabulary(str(root / "sp.model"))
    base = dict(operation="rephrase", max_prompt_tokens=1000, max_new_tokens=24, keep_unparsed=True)
    # Stop ids that end rows at varying lengths, as a real generator's completions do: tokens this model emits
    # greedily at different steps.
    probe = synthesize.Synthesizer(cfg, params, vocab, synthesize.SynthesisConfig(**base, temperature=0.0))
    texts = [json.loads(line)["text"] for line in shards[0].read_text().splitlines()]
    greedy = probe.sampler.generate([probe.prompt_tokens(t) for t in texts], max_new_tokens=24).tokens
    stops = sorted({int(row[2 + 5 * i]) for i, row in enumerate(greedy)})
    runs = {}
    for batching, size in (("static", 3), ("continuous", 2)):
        settings = synthesize.SynthesisConfig(**base, temperature=temperature, batch_size=size, batching=batching)
        synth = synthesize.Synthesizer(cfg, params, vocab, settings, stop_ids=stops)
        manifest = synth.run([str(p) for p in shards], tmp_path / batching, progress=False)
        runs[batching] = [json.loads(line) for p in shards for line in (tmp_path / batching / p.name).open()]
        assert manifest["batching"]["mode"] == batching
    static, continuous = runs["static"], runs["continuous"]
    assert [r["source_id"] for r in continuous] == [r["source_id"] for r in static]
    assert len({r["source_id"] for r in static}) == len(static) == 16
    assert continuous == static
    lengths = {r["completion_tokens"] for r in static}
    assert len(lengths) > 2 and any(r["finished"] for r in static)  # rows ended at different lengths
    assert manifest["batching"]["occupancy"] > 0.5 and manifest["batching"]["prefill_padding"] < 0.5


def test_config_errors_name_the_knob(workspace):
    root, _ = workspace
    with pytest.raises(ValueError, match="SynthesisConfig.operation='summary'"):
        synthesize.SynthesisConfig(operation="summary")
    with pytest.raises(ValueError, match="SynthesisConfig.batch_size=0"):
        synthesize.SynthesisConfig(operation="rephrase", batch_size=0)
    cfg, params = hf.load(root / "generator")
    with pytest.raises(ValueError, match="max_new_tokens=2048 exceeds the generator's max_seq_len=2048"):
        synthesize.Synthesizer(
            cfg, params, load_vocabulary(str(root / "sp.model")), synthesize.SynthesisConfig(operation="rephrase")
        )


@pytest.mark.slow  # the CLI in a fresh process; the job it runs is pinned in process here
def test_synthesize_cli(workspace, tmp_path):
    from test_cli import synpro

    root, shards = workspace
    out = tmp_path / "cli"
    flags = [
        f"--gin.GENERATOR='{root / 'generator'}'",
        f"--gin.SHARDS=['{shards[0]}']",
        f"--gin.SYNTH_OUT='{out}'",
        "--gin.OPERATION='reformat'",
        f"--gin.synpro.synthesize.vocabulary='{root / 'sp.model'}'",
        "--gin.synpro.SynthesisConfig.max_prompt_tokens=1000",
        "--gin.synpro.SynthesisConfig.max_new_tokens=4",
        "--gin.synpro.SynthesisConfig.batch_size=8",
        "--gin.synpro.synthesize.mesh=@synpro.MeshConfig()",
        "--gin.synpro.MeshConfig.data=8",
    ]
    done = synpro("synthesize", "--gin_file=gin/runs/synthesize.gin", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"('reformat', 1, '{out}/*.jsonl')" in done.stdout
    assert len(list(synthesize.iter_records(out))) == 5 and (out / "config.gin").exists()
    missing = synpro("synthesize", "--gin_file=gin/runs/synthesize.gin")
    assert missing.returncode == 2 and "GENERATOR" in missing.stderr


# --- resumes that cannot mix generators -------------------------------------------------------------------------
BASE = dict(operation="rephrase", max_prompt_tokens=1000, max_new_tokens=3, batch_size=2, keep_unparsed=True)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def generator(workspace):
    root, shards = workspace
    cfg, params = hf.load(root / "generator")
    return cfg, params, load_vocabulary(str(root / "sp.model"))


def make(generator, step=7, **overrides):
    cfg, params, vocab = generator
    return synthesize.Synthesizer(
        cfg, params, vocab, synthesize.SynthesisConfig(**{**BASE, **overrides}), generator="gen", generator_step=step
    )


def snapshot(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def finished(workspace, generator, tmp_path_factory):
    """part0 synthesized to the end by generator step 7 with BASE settings."""
    _, shards = workspace
    out = tmp_path_factory.mktemp("finished")
    make(generator).run([str(shards[0])], out, progress=False)
    assert (out / "part0.jsonl").exists()
    return out


@pytest.fixture(scope="module")
def partial(workspace, generator, tmp_path_factory):
    """part0 stopped after its first batch (2 of 5 records) under generator step 7."""
    _, shards = workspace
    out = tmp_path_factory.mktemp("partial")
    synth = make(generator, batching="static")  # whole 2-document batches (batching is not fingerprinted)
    write, calls = synth._write, [0]

    def stop_after_one(append, records):
        calls[0] += 1
        if calls[0] > 1:
            raise Stop
        write(append, records)

    synth._write = stop_after_one
    with pytest.raises(Stop):
        synth.run([str(shards[0])], out, progress=False)
    assert len((out / "part0.jsonl.partial").read_text().splitlines()) == 2
    return out


@pytest.mark.parametrize("state", ["finished", "partial"])
def test_other_generator_step_is_refused(workspace, generator, state, request):
    _, shards = workspace
    out = request.getfixturevalue(state)
    before = snapshot(out)
    label = "part0.jsonl (partial)" if state == "partial" else "part0.jsonl:"
    with pytest.raises(
        ValueError,
        match=r"(?s)" + re.escape(label) + r".*generator_step: 7 then, 8 now"
        r".*synpro.SynthesisConfig.overwrite = True",
    ):
        make(generator, step=8).run([str(shards[0])], out, progress=False)
    assert snapshot(out) == before  # nothing appended, nothing deleted


def test_other_weights_at_the_same_path_and_step_are_refused(workspace, generator, finished):
    """A generator re-exported to the same path (an HF export is always step 0) is told apart by its weights."""
    _, shards = workspace
    cfg, params, vocab = generator
    before = snapshot(finished)
    nudged = jax.tree.map(lambda x: x * 1.001, params)
    with pytest.raises(ValueError, match="generator_weights: .* then"):
        synthesize.Synthesizer(
            cfg, nudged, vocab, synthesize.SynthesisConfig(**BASE), generator="gen", generator_step=7
        ).run([str(shards[0])], finished, progress=False)
    assert snapshot(finished) == before


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(seed=1), "seed: 0 then, 1 now"),
        (dict(temperature=0.5), "temperature: 1.0 then, 0.5 now"),
        (dict(top_p=0.5), "top_p: 0.9 then, 0.5 now"),
        (dict(top_k=4), "top_k: null then, 4 now"),
        (dict(max_new_tokens=4), "max_new_tokens: 3 then, 4 now"),
        (dict(operation="reformat"), 'operation: "rephrase" then, "reformat" now'),
        (dict(max_prompt_tokens=900), "max_prompt_tokens: 1000 then, 900 now"),
    ],
)
def test_changed_seed_or_sampling_knob_is_refused(workspace, generator, finished, change, field):
    _, shards = workspace
    before = snapshot(finished)
    with pytest.raises(ValueError, match=re.escape(field)):
        make(generator, **change).run([str(shards[0])], finished, progress=False)
    assert snapshot(finished) == before
    # A knob that changes no record may differ: the finished shard is skipped, the partial one resumed.
    assert make(generator, batch_size=3)._conflicts(finished, [finished / "part0.jsonl"], every=True) == {}


def test_changed_prompt_version_is_refused(workspace, generator, finished, partial, monkeypatch):
    _, shards = workspace
    monkeypatch.setattr(synthesize.prompts_lib, "PROMPT_VERSION", synthesize.prompts_lib.PROMPT_VERSION + 1)
    for out in (finished, partial):
        with pytest.raises(ValueError, match=r"prompt_version: 3 then, 4 now"):
            make(generator).run([str(shards[0])], out, progress=False)


def test_shards_without_a_fingerprint_are_refused(workspace, generator, finished, tmp_path):
    """Shards from before the sidecar existed, or another job's shards in the same out_dir (read together by the
    DataConfig glob), are not resumed, skipped or mixed in silently."""
    _, shards = workspace
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "part0.jsonl.meta.json").unlink()
    with pytest.raises(ValueError, match=r"part0.jsonl: no readable fingerprint"):
        make(generator).run([str(shards[0])], out, progress=False)
    shutil.rmtree(out)
    shutil.copytree(finished, out)
    (out / "stale.jsonl").write_text((out / "part0.jsonl").read_text())
    with pytest.raises(ValueError, match=r"stale.jsonl: no readable fingerprint"):
        make(generator).run([str(shards[0])], out, progress=False)


def test_same_settings_resume_the_partial_shard(workspace, generator, partial, tmp_path):
    _, shards = workspace
    out = tmp_path / "out"
    shutil.copytree(partial, out)
    kept = (out / "part0.jsonl.partial").read_text().splitlines()
    manifest = make(generator, batch_size=4).run([str(shards[0])], out, progress=False)
    assert manifest["shards"][0]["resumed"] == 2
    lines = (out / "part0.jsonl").read_text().splitlines()
    assert lines[:2] == kept and len(lines) == 5
    assert manifest["fingerprint"]["generator_step"] == 7 and manifest["prompt_version"] == 3


@pytest.mark.parametrize("state", ["finished", "partial"])
def test_overwrite_starts_a_fresh_output(workspace, generator, state, request, tmp_path):
    _, shards = workspace
    out = tmp_path / "out"
    shutil.copytree(request.getfixturevalue(state), out)
    (out / "stale.jsonl").write_text('{"source_id": "x", "generator_step": 7}\n')  # no fingerprint: replaced too
    manifest = make(generator, step=8, overwrite=True).run([str(shards[0])], out, progress=False)
    records = list(synthesize.iter_records(out))
    assert len(records) == 5 and {r["generator_step"] for r in records} == {8}  # nothing appended to old records
    assert sorted(r["source_id"] for r in records) == [f"part0.jsonl:{i}" for i in range(1, 6)]
    assert not (out / "stale.jsonl").exists() and not list(out.glob("*.partial"))
    meta = json.loads((out / "part0.jsonl.meta.json").read_text())
    assert meta["fingerprint"]["generator_step"] == 8 and manifest["shards"][0]["resumed"] == 0
    # With the same settings overwrite remakes nothing: a rerun skips the finished shard.
    again = make(generator, step=8, overwrite=True).run([str(shards[0])], out, progress=False)
    assert again["shards"][0]["skipped"] == "finished earlier"


# --- long documents are cut in the middle, not dropped ----------------------------------------------------------
class CharVocab:
    """One token per character: token counts are exact and easy to read in a test."""

    vocab_size, eos_id = 0x110000, 1

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_long_source_middle_is_cut_to_exactly_the_budget():
    vocab = CharVocab()
    before, after = synthesize.prompts_lib.prompt_parts("rephrase")
    marker = synthesize.prompts_lib.CUT_MARKER
    empty = len(before) + len(after)
    text = "".join(f"<{i}>" for i in range(3000))
    budget = empty + 101
    build = synthesize.PromptBuilder(vocab, synthesize.SynthesisConfig(operation="rephrase", max_prompt_tokens=budget))
    prompt = build(f"  {text}\n")
    keep = 101 - len(marker)
    assert len(prompt.ids) == budget and prompt.cut_chars == 0 and prompt.cut_tokens == len(text) - keep
    assert vocab.decode(prompt.ids) == before + text[: (keep + 1) // 2] + marker + text[-(keep // 2) :] + after
    fits = build("A short document.")
    assert vocab.decode(fits.ids) == before + "A short document." + after and fits.cut_tokens == 0
    # The character cut comes first (a bound before tokenizing); the token cut's gap then covers its join.
    build = synthesize.PromptBuilder(
        vocab, synthesize.SynthesisConfig(operation="rephrase", max_prompt_tokens=budget, max_source_chars=1000)
    )
    prompt = build(text)
    assert prompt.cut_chars == len(text) - 1000 and prompt.cut_tokens == 1000 - keep and len(prompt.ids) == budget
    assert vocab.decode(prompt.ids) == before + text[: (keep + 1) // 2] + marker + text[-(keep // 2) :] + after
    # too_long only when even an empty source does not fit.
    tight = synthesize.PromptBuilder(vocab, synthesize.SynthesisConfig(operation="rephrase", max_prompt_tokens=empty))
    assert tight(text).ids == [*vocab.encode(before), *vocab.encode(after)] and tight(text).cut_tokens == len(text)
    over = synthesize.PromptBuilder(
        vocab, synthesize.SynthesisConfig(operation="rephrase", max_prompt_tokens=empty - 1)
    )
    assert over("").ids is None and over("").empty_len == empty


def test_records_say_the_source_was_cut(workspace, generator, tmp_path):
    root, shards = workspace
    cfg, params, vocab = generator
    empty = len(synthesize.PromptBuilder(vocab, synthesize.SynthesisConfig(operation="rephrase"))("").ids)
    records = {}
    for budget in (empty + 20, empty - 1):
        out = tmp_path / str(budget)
        make(generator, max_prompt_tokens=budget).run([str(shards[1])], out, progress=False)
        records[budget] = {r["source_id"]: r for r in synthesize.iter_records(out)}
    cut = records[empty + 20]
    assert len(cut) == 6 and all(r["status"] != "too_long" and r["prompt_tokens"] <= empty + 20 for r in cut.values())
    long = cut["part1.jsonl:5"]
    assert long["prompt_tokens"] == empty + 20 and long["source_cut_tokens"] > 0 and long["source_cut_chars"] == 0
    too_long = records[empty - 1]
    assert all(r["status"] == "too_long" and r["text"] == "" and r["prompt_tokens"] == empty for r in too_long.values())


def _gin_settings(experiment):
    """The SynthesisConfig an experiment's gin files configure."""
    import gin

    from synpro_jax import configs

    gin.clear_config()
    try:
        configs.parse([experiment], [])
        return gin.get_configurable("synpro.SynthesisConfig")()
    finally:
        gin.clear_config()


def test_cpu_organic_rephrase_config_writes_no_too_long_records():
    """As shipped it wrote too_long records for 287 of 900 documents: its 768-token budget is now met by cutting
    the middle of long sources, whatever the vocabulary."""
    settings = _gin_settings("gin/experiments/cpu_organic_rephrase.gin")
    assert settings.max_prompt_tokens == 768
    build = synthesize.PromptBuilder(CharVocab(), settings)
    rng = np.random.default_rng(0)
    for n in [0, 1, 500, 640, 700, 5_000, 19_999, 20_001, 200_000]:
        text = "".join(rng.choice(list("abc def. \n"), n))
        prompt = build(text)
        assert prompt.ids is not None and len(prompt.ids) <= 768
    shard = Path(__file__).resolve().parents[2].parent / "shared/data/organic/openwebtext_900.jsonl"
    tokenizer = shard.parents[1] / "tokenizers/dolma2.json"
    if not (shard.exists() and tokenizer.exists()):
        pytest.skip("../shared/data is absent: the real-data half of this check is skipped")
    build = synthesize.PromptBuilder(load_vocabulary(str(tokenizer)), settings)
    prompts = [build(json.loads(line)["text"]) for line in shard.read_text().splitlines() if line.strip()]
    assert len(prompts) == 900 and all(p.ids is not None and len(p.ids) <= 768 for p in prompts)
    assert sum(p.cut_tokens > 0 for p in prompts) > 100  # a good share of them needed the cut


def test_a_document_selection_synthesizes_only_those_ids_and_is_part_of_the_fingerprint(
    workspace, generator, finished, tmp_path
):
    """The loop synthesizes a run's training split only: held-out documents never come back as synthetic text."""
    _, shards = workspace
    cfg, params, vocab = generator
    chosen = ["part0.jsonl:2", "part0.jsonl:4", "part0.jsonl:5"]

    def selecting(ids):
        return synthesize.Synthesizer(
            cfg, params, vocab, synthesize.SynthesisConfig(**BASE), generator="gen", generator_step=7, documents=ids
        )

    out = tmp_path / "selected"
    manifest = selecting(chosen).run([str(shards[0])], out, progress=False)
    assert [r["source_id"] for r in synthesize.iter_records(out)] == chosen
    assert manifest["shards"][0]["not_selected"] == 2
    # Same sampling streams as an unselected run: each kept record equals the full run's for its id.
    full = {r["source_id"]: r for r in synthesize.iter_records(finished)}
    for r in synthesize.iter_records(out):
        assert r == full[r["source_id"]]
    # Another selection (or none) is another job: refused, naming the field.
    with pytest.raises(ValueError, match="documents.* then"):
        selecting(chosen[:2]).run([str(shards[0])], out, progress=False)
    with pytest.raises(ValueError, match="documents.* then"):
        make(generator).run([str(shards[0])], out, progress=False)


def test_parts_of_another_process_count_are_skipped_when_finished_and_refused_when_not(tmp_path):
    from etils import epath

    out = epath.Path(tmp_path)
    (out / "a.jsonl").write_text("{}\n")  # finished by one process
    (out / "b.host-0-of-2.jsonl").write_text("{}\n")  # started by two: host 1 still partial
    (out / "b.host-1-of-2.jsonl.partial").write_text("{}\n")
    (out / "c.host-0-of-2.jsonl").write_text("{}\n")
    (out / "c.host-1-of-2.jsonl").write_text("{}\n")
    layouts = synthesize._layouts(out)
    assert layouts["b"] == {2: {0: "finished", 1: "partial"}}
    assert synthesize._finished_elsewhere(out, "a", layouts["a"], 2) == 1
    assert synthesize._finished_elsewhere(out, "c", layouts["c"], 1) == 2
    assert synthesize._finished_elsewhere(out, "c", layouts["c"], 2) is None  # this job's own layout
    with pytest.raises(
        ValueError,
        match=r"shard b .* started by \[2\] process\(es\) and is not finished "
        r"\(b.host-0-of-2.jsonl, b.host-1-of-2.jsonl.partial\), but this job runs 1",
    ):
        synthesize._finished_elsewhere(out, "b", layouts["b"], 1)
    assert synthesize.part_name("b", 1, 2) == "b.host-1-of-2.jsonl" and synthesize.part_name("b") == "b.jsonl"
