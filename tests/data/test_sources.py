"""Document sources: every format, and bad input counted with file:line instead of crashing or vanishing."""

import gzip
import json

import numpy as np
import pytest

from synpro_jax.data import sources


def write_jsonl(path, rows, opener=open):
    with opener(path, "wb") as fh:
        for row in rows:
            fh.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())


def test_jsonl_reads_documents_and_reports_each_problem(tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(
        path,
        [
            {"text": "first document", "id": "a"},
            b"{not json\n",
            {"text": "   "},
            {"body": "wrong field"},
            b'{"text": "caf\xe9 latin-1 bytes"}\n',
            b"\n",
            {"text": 42},
            {"text": "second document", "id": "b"},
        ],
    )
    src = sources.JsonlSource(path, id_field="id")
    docs = list(src)
    assert [(d.id, d.text) for d in docs] == [("a", "first document"), ("b", "second document")]
    r = src.report
    assert (r.documents, r.malformed, r.empty, r.bad_utf8) == (2, 3, 1, 1)
    summary = r.summary()
    for where in (f"{path}:2", f"{path}:3", f"{path}:4", f"{path}:5", f"{path}:7"):
        assert where in summary, where
    assert "invalid JSON" in summary and "no 'text' field" in summary


def test_jsonl_gzip_and_default_ids(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    write_jsonl(path, [{"text": "one"}, {"text": "two"}], opener=gzip.open)
    docs = list(sources.open_source(str(path)))
    assert [d.id for d in docs] == ["docs.jsonl.gz:1", "docs.jsonl.gz:2"]


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    write_jsonl(path, [{"text": f"doc {i} " * 50} for i in range(200)], opener=gzip.open)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = sources.JsonlSource(path)
    docs = list(src)
    assert 0 < len(docs) < 200 and src.report.malformed == 1
    assert "file ends early" in src.report.summary()


def test_missing_file_and_wrong_field_fail_at_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        sources.JsonlSource(str(tmp_path / "nope-*.jsonl"))
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"content": "x", "url": "u"}])
    with pytest.raises(ValueError, match="text field 'text' not found.*fields present: \\['content', 'url'\\]"):
        sources.JsonlSource(path)
    assert len(list(sources.JsonlSource(path, text_field="content"))) == 1


def test_text_source_splits(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"para one\nstill one\n\n\npara two\n\xff\xfe bad\nlast\n")
    para = sources.TextSource(path)
    docs = list(para)
    assert [d.text for d in docs] == ["para one\nstill one", "para two\nlast"]
    assert docs[1].id == "t.txt:5" and para.report.bad_utf8 == 1 and f"{path}:6" in para.report.summary()
    assert len(list(sources.TextSource(path, split="line"))) == 4
    assert len(list(sources.TextSource(path, split="file"))) == 1
    with pytest.raises(ValueError, match="split='words'"):
        sources.TextSource(path, split="words")


def test_npy_tokens_split_on_eos(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, np.array([5, 6, 1, 1, 7, 8, 9, 1, 4, 255], np.uint32))
    src = sources.NpyTokenSource(path, eos_id=1, vocab_size=256)
    docs = list(src)
    assert [d.tokens.tolist() for d in docs] == [[5, 6], [7, 8, 9], [4, 255]]
    assert (src.report.empty, src.report.documents) == (1, 3)  # the EOS-EOS gap
    assert f"{path}:3: empty" in src.report.summary()
    raw = tmp_path / "tokens.bin"
    np.array([3, 4, 1, 5], np.uint32).tofile(raw)
    assert [d.tokens.tolist() for d in sources.open_source(str(raw), eos_id=1)] == [[3, 4], [5]]


def test_tfds_source(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.dataset_builders.store_as_tfds_dataset(
        name="synpro_toy",
        version="1.0.0",
        data_dir=str(tmp_path),
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        split_datasets={"train": tf.data.Dataset.from_tensor_slices({"text": ["alpha", "", "beta"]})},
    )
    src = sources.open_source("tfds:synpro_toy/train", data_dir=str(tmp_path))
    assert [d.text for d in src] == ["alpha", "beta"] and src.report.empty == 1
    with pytest.raises(ValueError, match="no feature 'body'"):
        sources.TfdsSource("synpro_toy", text_field="body", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="synpro_toy_missing.*not found"):
        sources.TfdsSource("synpro_toy_missing", data_dir=str(tmp_path))


def test_real_shared_corpora(shared_data):
    organic = shared_data / "organic"
    owt = sources.JsonlSource(str(organic / "openwebtext_900.jsonl"))
    assert sum(1 for _ in owt) == 900 and owt.report.skipped == 0
    c4 = sources.open_source(str(organic / "c4-sample.0*.json.gz"))
    assert sum(1 for _ in c4) > 0
    shakespeare = sources.TextSource(str(organic / "tinyshakespeare.txt"))
    assert sum(1 for _ in shakespeare) > 1000


def test_a_control_character_is_named_once_with_its_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, [b'{"text": "a\tb"}\n', {"text": "fine"}])
    src = sources.JsonlSource(path)
    assert [d.text for d in src] == ["fine"]
    summary = src.report.summary()
    assert f"{path}:1" in summary and "invalid JSON (Invalid control character at column 12)" in summary
    assert "at at" not in summary
