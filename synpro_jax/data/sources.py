"""Organic document sources: JSON lines (plain or gzipped), plain text, TFDS, and pre-tokenized ``.npy`` files.

Each source checks at construction that its files exist and that the text field is there, so a typo fails
before any work starts. While reading, malformed JSON, missing fields, empty documents and bad UTF-8 are
skipped, counted in a :class:`ReadReport` and named by ``file:line``; nothing crashes half-way and nothing
vanishes silently.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

MAX_EXAMPLES = 20  # problems kept verbatim per report; the rest are counted


@dataclasses.dataclass
class Document:
    id: str  # stable across runs: "<file name>:<line>" unless the source has an id field
    text: str | None = None
    tokens: np.ndarray | None = None  # pre-tokenized sources


@dataclasses.dataclass
class ReadReport:
    """What a pass over a source kept and skipped, with file:line for the first problems of each kind."""

    documents: int = 0
    empty: int = 0
    malformed: int = 0
    bad_utf8: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def problem(self, kind: str, where: str, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind}: {detail}")
            log.warning("skipped %s: %s (%s)", where, kind, detail)

    @property
    def skipped(self) -> int:
        return self.empty + self.malformed + self.bad_utf8

    def summary(self) -> str:
        text = (f"{self.documents} documents kept; skipped {self.skipped} "
                f"(empty {self.empty}, malformed {self.malformed}, bad UTF-8 {self.bad_utf8})")
        if self.examples:
            more = self.skipped - len(self.examples)
            text += "\n  " + "\n  ".join(self.examples) + (f"\n  ... and {more} more" if more > 0 else "")
        return text


def expand_paths(patterns: str | Sequence[str], what: str = "source") -> list[Path]:
    """Glob patterns -> sorted existing files; an error naming the pattern when one matches nothing."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [str(patterns)]
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(str(pattern))))
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {pattern!r}")
        files.extend(Path(m) for m in matches if Path(m).is_file())
    if not files:
        raise FileNotFoundError(f"{what}: {list(patterns)} matched only directories")
    return files


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


class JsonlSource:
    """One document per JSON line; ``.gz`` files are decompressed on the fly."""

    def __init__(self, paths: str | Sequence[str], text_field: str = "text", id_field: str | None = None,
                 probe_lines: int = 50):
        self.files = expand_paths(paths, "jsonl source")
        self.text_field, self.id_field = text_field, id_field
        self.report = ReadReport()
        for f in self.files:
            self._check_field(f, probe_lines)

    def _check_field(self, path: Path, probe_lines: int) -> None:
        seen_keys: set[str] = set()
        try:
            with _open_bytes(path) as fh:
                for i, raw in enumerate(fh):
                    if i >= probe_lines:
                        break
                    try:
                        record = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        continue
                    if isinstance(record, dict):
                        if self.text_field in record:
                            return
                        seen_keys.update(record)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: cannot be read ({e})") from None
        if seen_keys:
            raise ValueError(f"{path}: text field {self.text_field!r} not found in the first {probe_lines} lines; "
                             f"fields present: {sorted(seen_keys)}")

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            with _open_bytes(path) as fh:
                lineno = 0
                try:
                    for lineno, raw in enumerate(fh, start=1):
                        doc = self._parse(path, lineno, raw)
                        if doc is not None:
                            self.report.documents += 1
                            yield doc
                except (OSError, EOFError) as e:  # a truncated gzip: keep what was read, report the rest
                    self.report.problem("malformed", f"{path}:{lineno + 1}", f"file ends early or is corrupt ({e})")

    def _parse(self, path: Path, lineno: int, raw: bytes) -> Document | None:
        where = f"{path}:{lineno}"
        if not raw.strip():
            return None  # blank lines are formatting, not documents
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.report.problem("bad_utf8", where, str(e))
            return None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            self.report.problem("malformed", where, f"invalid JSON ({e.msg} at column {e.colno})")
            return None
        if not isinstance(record, dict) or self.text_field not in record:
            self.report.problem("malformed", where, f"no {self.text_field!r} field")
            return None
        text = record[self.text_field]
        if not isinstance(text, str):
            self.report.problem("malformed", where, f"{self.text_field!r} is {type(text).__name__}, not text")
            return None
        if not text.strip():
            self.report.problem("empty", where, "empty document")
            return None
        doc_id = str(record[self.id_field]) if self.id_field and self.id_field in record else f"{path.name}:{lineno}"
        return Document(doc_id, text=text)


class TextSource:
    """Plain text. ``split="paragraph"`` (default) makes each blank-line-separated block a document;
    ``"line"`` each line; ``"file"`` each file."""

    SPLITS = ("paragraph", "line", "file")

    def __init__(self, paths: str | Sequence[str], split: str = "paragraph"):
        if split not in self.SPLITS:
            raise ValueError(f"TextSource split={split!r}: choose one of {self.SPLITS}")
        self.files = expand_paths(paths, "text source")
        self.split = split
        self.report = ReadReport()

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            with _open_bytes(path) as fh:
                block: list[str] = []
                start = 1
                for lineno, raw in enumerate(fh, start=1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self.report.problem("bad_utf8", f"{path}:{lineno}", str(e))
                        continue
                    if self.split == "line":
                        if line.strip():
                            yield self._keep(path, lineno, line.rstrip("\n"))
                        continue
                    if self.split == "paragraph" and not line.strip():
                        if block:
                            yield self._keep(path, start, "".join(block).rstrip("\n"))
                        block, start = [], lineno + 1
                        continue
                    if not block:
                        start = lineno
                    block.append(line)
                if block and "".join(block).strip():
                    yield self._keep(path, start, "".join(block).rstrip("\n"))
                elif self.split == "file" and not block:
                    self.report.problem("empty", f"{path}:1", "empty file")

    def _keep(self, path: Path, lineno: int, text: str) -> Document:
        self.report.documents += 1
        return Document(f"{path.name}:{lineno}", text=text)


class TfdsSource:
    """A prepared TFDS dataset (never downloaded here: ``download=False``)."""

    def __init__(self, name: str, split: str = "train", text_field: str = "text", data_dir: str | None = None):
        import tensorflow_datasets as tfds

        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"TFDS dataset {name!r} (data_dir={data_dir}): cannot be opened ({first_line})") from None
        if not self.builder.is_prepared():
            raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared under data_dir={data_dir}; "
                                    "prepare it first (this library never downloads data)")
        features = self.builder.info.features
        if text_field not in features:
            raise ValueError(f"TFDS dataset {name!r}: no feature {text_field!r}; features: {sorted(features)}")
        if split not in self.builder.info.splits:
            raise ValueError(f"TFDS dataset {name!r}: no split {split!r}; splits: {sorted(self.builder.info.splits)}")
        self.name, self.split, self.text_field = name, split, text_field
        self.report = ReadReport()

    def __iter__(self) -> Iterator[Document]:
        ds = self.builder.as_dataset(split=self.split, shuffle_files=False)
        for i, ex in enumerate(ds.as_numpy_iterator()):
            raw = ex[self.text_field]
            where = f"tfds:{self.name}/{self.split}[{i}]"
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError as e:
                self.report.problem("bad_utf8", where, str(e))
                continue
            if not text.strip():
                self.report.problem("empty", where, "empty document")
                continue
            self.report.documents += 1
            yield Document(f"{self.name}/{self.split}:{i}", text=text)


class NpyTokenSource:
    """Pre-tokenized OLMo-style token files: one flat uint32 array per file (``.npy``, or raw ``.bin``/memmap
    with ``dtype``), documents separated by ``eos_id``."""

    def __init__(self, paths: str | Sequence[str], eos_id: int, dtype: str = "uint32", vocab_size: int | None = None):
        self.files = expand_paths(paths, "token source")
        self.eos_id, self.dtype, self.vocab_size = eos_id, np.dtype(dtype), vocab_size
        self.report = ReadReport()
        for f in self.files:
            self._array(f)  # fails early on unreadable files

    def _array(self, path: Path) -> np.ndarray:
        try:
            if path.suffix == ".npy":
                arr = np.load(path, mmap_mode="r")
            else:
                arr = np.memmap(path, dtype=self.dtype, mode="r")
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a readable token file ({e})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "ui":
            raise ValueError(f"{path}: expected a flat integer token array, got {arr.dtype} {arr.shape}")
        return arr

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            arr = self._array(path)
            ends = np.flatnonzero(np.asarray(arr) == self.eos_id)
            start = 0
            for end in list(ends) + [len(arr)]:
                tokens = np.asarray(arr[start:end], dtype=np.int32)
                where = f"{path}:{start}"
                if tokens.size == 0:
                    if end < len(arr):
                        self.report.problem("empty", where, "empty document between two EOS tokens")
                elif self.vocab_size is not None and int(tokens.max()) >= self.vocab_size:
                    self.report.problem("malformed", where, f"token {int(tokens.max())} >= vocab size {self.vocab_size}")
                else:
                    self.report.documents += 1
                    yield Document(f"{path.name}:{start}", tokens=tokens)
                start = end + 1


class MarkovSource:
    """Documents drawn from the built-in Markov corpus (token ids, no files): ``markov:VOCAB:DOCS:LENGTH[:SEED]``."""

    def __init__(self, vocab_size: int, num_docs: int, doc_len: int, seed: int = 0):
        from synpro_jax.data.markov import MarkovCorpus

        if num_docs < 1 or doc_len < 1:
            raise ValueError(f"markov source: num_docs={num_docs} and doc_len={doc_len} must be positive")
        self.chain = MarkovCorpus(vocab_size=vocab_size, seed=seed)
        self.num_docs, self.doc_len, self.seed = num_docs, doc_len, seed
        self.name = f"markov:{vocab_size}:{num_docs}:{doc_len}:{seed}"
        self.report = ReadReport()

    @classmethod
    def from_spec(cls, spec: str) -> "MarkovSource":
        try:
            parts = [int(x) for x in spec.split(":")[1:]]
            return cls(*parts)
        except (TypeError, ValueError):
            raise ValueError(f"source {spec!r}: expected markov:VOCAB:DOCS:LENGTH[:SEED]") from None

    def __iter__(self) -> Iterator[Document]:
        rows = self.chain.sample(self.num_docs, self.doc_len, np.random.default_rng([self.seed, 1]))
        for i, row in enumerate(rows):
            self.report.documents += 1
            yield Document(f"markov:{i}", tokens=row)


def open_source(spec: str, **kwargs):
    """A source from a spec string: ``tfds:NAME[/SPLIT]``, or files whose suffix picks the reader
    (``.jsonl``/``.json``/``.jsonl.gz``/``.json.gz`` -> JSON lines, ``.txt``/``.txt.gz`` -> text,
    ``.npy``/``.bin`` -> tokens)."""
    if spec.startswith("markov:"):
        return MarkovSource.from_spec(spec)
    if spec.startswith("tfds:"):
        name, _, split = spec[5:].partition("/")
        return TfdsSource(name, split or "train", **kwargs)
    lowered = spec.lower().removesuffix(".gz")
    if lowered.endswith((".jsonl", ".json")):
        return JsonlSource(spec, **kwargs)
    if lowered.endswith(".txt"):
        return TextSource(spec, **kwargs)
    if lowered.endswith((".npy", ".bin")):
        return NpyTokenSource(spec, **kwargs)
    raise ValueError(f"source {spec!r}: cannot tell the format; use a .jsonl/.json[.gz], .txt[.gz], .npy/.bin "
                     "path or tfds:NAME/SPLIT")
