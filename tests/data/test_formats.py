"""The formats users have (DCLM's .jsonl.zst, HF parquet, OLMo's raw token files) and their edge cases, and the one
function that decides how a spec is opened."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard as zstd

from synpro_jax.data import sources

# The same bad rows test_sources.py checks for plain JSONL: good, bad JSON, empty, wrong field, latin-1, blank,
# non-text, and a valid JSON string holding an unpaired surrogate.
MIXED_ROWS = [
    {"text": "first document", "id": "a"},
    b"{not json\n",
    {"text": "   "},
    {"body": "wrong field"},
    b'{"text": "caf\xe9 latin-1 bytes"}\n',
    b"\n",
    {"text": 42},
    b'{"text": "half a pair \\ud800 here"}\n',
    {"text": "second document", "id": "b"},
]


def jsonl_bytes(rows) -> bytes:
    return b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows)


def write_zst(path, data: bytes, frames: int = 1) -> None:
    """Compress in ``frames`` independent frames (as pzstd or a concatenation of shards writes them)."""
    cut = [len(data) * i // frames for i in range(frames + 1)]
    path.write_bytes(b"".join(zstd.ZstdCompressor().compress(data[a:b]) for a, b in zip(cut, cut[1:])))


def random_docs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)  # incompressible enough to span many compressed blocks
    return [{"text": " ".join(rng.integers(0, 10**9, 40).astype(str))} for _ in range(n)]


def check_mixed_report(src, path):
    docs = list(src)
    assert [(d.id, d.text) for d in docs] == [("a", "first document"), ("b", "second document")]
    r = src.report
    assert (r.documents, r.malformed, r.empty, r.bad_utf8) == (2, 3, 1, 2)
    summary = r.summary()
    for line in (2, 3, 4, 5, 7, 8):
        assert f"{path}:{line}:" in summary, line
    assert f"{path}:8: bad_utf8: 'text' has an unpaired surrogate U+D800" in summary


# --- DCLM-Baseline: .jsonl.zst ---------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 3])
def test_jsonl_zst_has_the_jsonl_accounting(tmp_path, frames):
    path = tmp_path / "shard_00000000_processed.jsonl.zst"
    write_zst(path, jsonl_bytes(MIXED_ROWS), frames=frames)
    src = sources.open_source(path, id_field="id")
    assert isinstance(src, sources.JsonlSource)
    check_mixed_report(src, path)


def test_jsonl_zst_wrong_field_fails_at_open(tmp_path):
    path = tmp_path / "d.jsonl.zst"
    write_zst(path, jsonl_bytes([{"content": "x", "url": "u"}]))
    with pytest.raises(ValueError, match=f"{path}: text field 'text' not found.*'content', 'url'"):
        sources.open_source(path)
    assert [d.text for d in sources.open_source(path, text_field="content")] == ["x"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".txt.gz", ".txt.zst"])
def test_truncated_compressed_file_keeps_what_was_read_and_reports_the_cut(tmp_path, suffix):
    """A cut .zst (whose zstandard stream_reader just stops) and a cut .txt.gz (which raised EOFError) are
    reported as a cut .jsonl.gz is: the documents before the cut kept, one malformed 'file ends early'."""
    docs = random_docs(2000)
    data = jsonl_bytes(docs) if suffix.startswith(".jsonl") else "".join(d["text"] + "\n\n" for d in docs).encode()
    path = tmp_path / f"cut{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        write_zst(path, data)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    src = sources.open_source(path)
    kept = list(src)
    assert 0 < len(kept) < len(docs)
    assert [d.text for d in kept] == [d["text"] for d in docs[: len(kept)]]  # nothing half-read is kept
    r = src.report
    assert (r.malformed, r.empty, r.bad_utf8, r.documents) == (1, 0, 0, len(kept))
    assert f"{path}:" in r.summary() and "file ends early or is corrupt" in r.summary()


def test_text_zst_and_gz_read_like_plain_text(tmp_path):
    data = b"para one\nstill one\n\npara two\n"
    write_zst(tmp_path / "t.txt.zst", data)
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(data))
    for name in ("t.txt.zst", "t.txt.gz"):
        src = sources.open_source(tmp_path / name, text_field="ignored for text")
        assert [(d.id, d.text) for d in src] == [(f"{name}:1", "para one\nstill one"), (f"{name}:4", "para two")]


# --- lone surrogates -------------------------------------------------------------------------------------------


def test_lone_surrogate_is_bad_input_and_pairs_are_fine(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b'{"text": "low \\udc00 alone"}\n'
        b'{"text": "an emoji \\ud83d\\ude00 pair"}\n'
        b'{"text": "ok", "id": "bad \\ud800 id"}\n'
    )
    src = sources.open_source(path, id_field="id")
    docs = list(src)
    assert [d.text for d in docs] == ["an emoji \U0001f600 pair"]
    for d in docs:
        d.text.encode("utf-8")  # what a tokenizer does first
    assert src.report.bad_utf8 == 2 and f"{path}:3: bad_utf8: 'id' has an unpaired surrogate" in src.report.summary()


# --- Parquet (HF datasets, e.g. FineWeb) -----------------------------------------------------------------------


def write_parquet(path, texts, ids=None, row_group_size=4, **columns):
    table = {"text": pa.array(texts, pa.string()), **columns}
    if ids is not None:
        table["id"] = ids
    pq.write_table(pa.table(table), path, row_group_size=row_group_size)


def test_parquet_streams_batches_and_counts_null_and_empty(tmp_path, monkeypatch):
    path = tmp_path / "000_00000.parquet"
    texts = [f"doc {i}" for i in range(10)]
    texts[3], texts[6], texts[7] = None, "", "  \n"
    write_parquet(path, texts, ids=[f"urn:{i}" for i in range(10)])
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("parquet must be streamed, not read whole"))
    src = sources.open_source(path, id_field="id")
    src.batch_rows = 3  # batches that do not line up with the row groups
    docs = list(src)
    assert [d.id for d in docs] == [f"urn:{i}" for i in (0, 1, 2, 4, 5, 8, 9)]
    assert [d.text for d in docs] == [f"doc {i}" for i in (0, 1, 2, 4, 5, 8, 9)]
    r = src.report
    assert (r.documents, r.malformed, r.empty, r.bad_utf8) == (7, 1, 2, 0)
    assert f"{path}[3]: malformed: 'text' is null" in r.summary() and f"{path}[6]: empty" in r.summary()
    assert [d.id for d in sources.open_source(path)][:2] == ["000_00000.parquet:0", "000_00000.parquet:1"]


def test_parquet_text_column_is_named_by_text_field(tmp_path):
    path = tmp_path / "fw.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "url": ["u1", "u2"]}), path)
    with pytest.raises(
        ValueError,
        match=f"{path}: no column 'text' \\(the source's text_field\\); "
        r"columns: \['content', 'url'\]",
    ):
        sources.open_source(path)
    with pytest.raises(ValueError, match="no column 'doc_id' \\(the source's id_field\\)"):
        sources.open_source(path, text_field="content", id_field="doc_id")
    with pytest.raises(ValueError, match="column 'n' holds int64, not text"):
        pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "n.parquet")
        sources.open_source(tmp_path / "n.parquet", text_field="n")
    assert [d.id for d in sources.open_source(path, text_field="content", id_field="url")] == ["u1", "u2"]


def test_damaged_parquet_loses_only_its_damaged_row_groups(tmp_path):
    path = tmp_path / "d.parquet"
    write_parquet(path, [f"row {i} " + "x" * (i % 50) for i in range(1000)], row_group_size=100)
    data = bytearray(path.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 20):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    src = sources.open_source(path)
    kept = [int(d.id.split(":")[1]) for d in src]
    lost_groups = sorted(set(range(10)) - {row // 100 for row in kept})
    assert 1 <= len(lost_groups) <= 2 and 999 in kept  # the rows after the damage are read too
    assert kept == [r for r in range(1000) if r // 100 not in lost_groups]
    assert src.report.malformed == len(lost_groups) and src.report.documents == len(kept)
    summary = src.report.summary()
    assert f"file ends early or is corrupt: rows {lost_groups[0] * 100} to {lost_groups[0] * 100 + 99}" in summary
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(path.read_bytes()[:5000])  # no footer: nothing can be read, so it fails at open
    with pytest.raises(ValueError, match=f"{cut}: not a readable parquet file"):
        sources.open_source(cut)


# --- token files -----------------------------------------------------------------------------------------------


def test_headerless_uint32_npy_is_read_as_olmo_writes_it(tmp_path):
    tokens = np.array([5, 6, 1, 100_000, 8, 9, 1, 4], np.uint32)  # ids above uint16, as OLMo's dolma2 has
    raw = tmp_path / "part-0-00000.npy"
    tokens.tofile(raw)  # OLMo's memmap: no header, despite the suffix
    src = sources.open_source(raw, eos_id=1, vocab_size=100_352)
    assert [d.tokens.tolist() for d in src] == [[5, 6], [100_000, 8, 9], [4]]
    assert [d.id for d in sources.open_source(raw, eos_id=1)] == [f"{raw.name}:0", f"{raw.name}:3", f"{raw.name}:7"]
    real = tmp_path / "real.npy"
    np.save(real, tokens.astype(np.int64))  # a NumPy .npy: its header decides the dtype (int64 here)
    assert [d.tokens.tolist() for d in sources.open_source(real, eos_id=1)] == [[5, 6], [100_000, 8, 9], [4]]
    (tmp_path / "odd.npy").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="odd.npy: not a readable token file.*10 bytes are not a whole number"):
        sources.open_source(tmp_path / "odd.npy", eos_id=1)


def test_documents_spanning_scan_chunks_are_whole(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 50, 1000).astype(np.uint32)
    tokens[rng.choice(1000, 60, replace=False)] = 1
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    expected = [d.tokens.tolist() for d in sources.NpyTokenSource(path, eos_id=1, chunk_tokens=10_000)]
    assert [d.tokens.tolist() for d in sources.NpyTokenSource(path, eos_id=1, chunk_tokens=7)] == expected
    assert sum(map(len, expected)) == 1000 - 60


def test_token_id_outside_the_vocabulary_names_file_and_offset(tmp_path):
    path = tmp_path / "tok.npy"
    np.array([5, 6, 1, 7, 300, 8, 1, 9], np.uint32).tofile(path)
    src = sources.open_source(path, eos_id=1, vocab_size=256)
    with pytest.raises(ValueError, match=f"{path}: token id 300 at token offset 4 is outside \\[0, 256\\)"):
        list(src)
    big = tmp_path / "big.bin"  # no vocab_size: ids that do not fit int32 are still refused, not wrapped
    np.array([3, 2**31 + 5, 1], np.uint32).tofile(big)
    with pytest.raises(ValueError, match="token id 2147483653 at token offset 1"):
        list(sources.open_source(big, eos_id=1))
    with pytest.raises(ValueError, match="eos_id=1000 is outside the vocabulary"):
        sources.open_source(path, eos_id=1000, vocab_size=256)


# --- format dispatch -------------------------------------------------------------------------------------------


def test_open_source_decides_every_format(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "j"}\n')
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(b'{"body": "g"}\n'))
    write_zst(tmp_path / "c.ndjson.zst", b'{"body": "z"}\n')
    (tmp_path / "d.txt").write_text("plain\n")
    pq.write_table(pa.table({"body": ["p"]}), tmp_path / "e.parquet")
    np.array([3, 1], np.uint32).tofile(tmp_path / "f.npy")
    np.array([4, 1], np.uint16).tofile(tmp_path / "g.bin")
    expect = {
        "a.jsonl": ("jsonl", "j"),
        "b.json.gz": ("jsonl", "g"),
        "c.ndjson.zst": ("jsonl", "z"),
        "d.txt": ("text", "plain"),
        "e.parquet": ("parquet", "p"),
        "f.npy": ("tokens", [3]),
        "g.bin": ("tokens", [4]),
    }
    for name, (fmt, content) in expect.items():
        spec = str(tmp_path / name)
        # the same keywords for every format, as a caller that does not know the format passes them
        src = sources.open_source(
            spec,
            text_field="body",
            eos_id=1,
            vocab_size=10,
            token_dtype="uint16" if name.endswith(".bin") else "uint32",
        )
        assert src.format == sources.format_of(spec) == fmt, name
        assert sources.is_pretokenized(spec) == (fmt == "tokens")
        doc = next(iter(src))
        assert (doc.tokens.tolist() if fmt == "tokens" else doc.text) == content, name
        assert src.describe()["format"] == fmt
    assert sources.is_pretokenized("markov:16:4:8") and sources.format_of("tfds:c4/en/train") == "tfds"


def test_open_source_globs_and_refusals(tmp_path):
    for i in range(2):
        write_zst(tmp_path / f"shard_{i}.jsonl.zst", jsonl_bytes([{"text": f"s{i}"}]))
    src = sources.open_source(str(tmp_path / "shard_*"))  # the pattern has no suffix: the files decide
    assert src.format == "jsonl" and [d.text for d in src] == ["s0", "s1"]
    (tmp_path / "shard_2.txt").write_text("t\n")
    with pytest.raises(ValueError, match="several formats"):
        sources.open_source(str(tmp_path / "shard_*"))
    with pytest.raises(ValueError, match="cannot tell the format"):
        sources.open_source(str(tmp_path / "data.csv"))
    with pytest.raises(ValueError, match="read uncompressed"):
        sources.open_source(str(tmp_path / "x.parquet.gz"))
    np.array([3, 1], np.uint32).tofile(tmp_path / "t.npy")
    with pytest.raises(ValueError, match="token files need eos_id"):
        sources.open_source(tmp_path / "t.npy")
    with pytest.raises(ValueError, match="vocabulary of 512 is larger than the model vocabulary \\(256\\)"):
        sources.open_source("markov:512:4:8", vocab_size=256)
    with pytest.raises(ValueError, match="expected markov:VOCAB:DOCS:LENGTH"):
        sources.open_source("markov:16:x")


def test_tfds_spec_with_a_config_keeps_it_in_the_name(monkeypatch):
    seen = []
    monkeypatch.setattr(sources, "TfdsSource", lambda name, split, **kw: seen.append((name, split, kw)))
    sources.open_source("tfds:c4/en:3.0.1/validation", text_field="body", data_dir="/d")
    sources.open_source("tfds:lm1b")
    assert seen == [
        ("c4/en:3.0.1", "validation", {"text_field": "body", "data_dir": "/d"}),
        ("lm1b", "train", {"text_field": "text", "data_dir": None}),
    ]


def test_report_merge_adds_counts_and_caps_examples():
    a, b = sources.ReadReport(documents=2), sources.ReadReport(documents=3)
    for i in range(sources.MAX_EXAMPLES):
        a.problem("empty", f"a:{i}", "empty")
    b.problem("malformed", "b:1", "bad")
    a.merge(b)
    assert (a.documents, a.empty, a.malformed, a.skipped) == (5, sources.MAX_EXAMPLES, 1, sources.MAX_EXAMPLES + 1)
    assert len(a.examples) == sources.MAX_EXAMPLES and "1 more" in a.summary()
