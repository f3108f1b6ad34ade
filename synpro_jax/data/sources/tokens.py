"""Sources that are token ids already: OLMo-style token files and the built-in Markov corpus."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import io
import os

from etils.epath import Path
import numpy as np

from synpro_jax import atomic
from synpro_jax.data.markov import MarkovCorpus
from synpro_jax.data.sources.base import Document, ReadReport, expand_paths

NPY_MAGIC = b"\x93NUMPY"
INT32_LIMIT = 2**31  # documents are handed on as int32


class NpyTokenSource:
    """Pre-tokenized token files: one flat integer array per file, documents separated by ``eos_id``.

    OLMo's released ``.npy`` token files are headerless memmaps of ``dtype`` (uint32 for its 100k-token
    vocabularies); a real NumPy ``.npy`` (one that starts with the ``\\x93NUMPY`` magic) is read with its own
    header and dtype, whatever the suffix. ``.bin`` files are raw too. Files are memory-mapped and scanned in
    chunks, so a multi-GB shard is never copied whole.

    A token id outside ``[0, vocab_size)`` is an error naming the file and the token's offset: such a file was
    made with another tokenizer (or is read with the wrong ``dtype``), and skipping its documents would lose
    data without anyone noticing.
    """

    format = "tokens"

    def __init__(
        self,
        paths: str | Sequence[str],
        eos_id: int,
        dtype: str = "uint32",
        vocab_size: int | None = None,
        chunk_tokens: int = 1 << 22,
    ):
        self.files = expand_paths(paths, "token source")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"token source dtype={dtype!r}: not a NumPy dtype") from None
        if self.dtype.kind not in "ui":
            raise ValueError(f"token source dtype={dtype!r}: token files hold integers (e.g. uint32, uint16)")
        if eos_id is None or int(eos_id) < 0:
            raise ValueError(f"token source eos_id={eos_id}: give the vocabulary's EOS id, which splits documents")
        if vocab_size is not None and not 0 <= eos_id < vocab_size:
            raise ValueError(f"token source eos_id={eos_id} is outside the vocabulary (vocab_size={vocab_size})")
        if chunk_tokens < 1:
            raise ValueError(f"token source chunk_tokens={chunk_tokens}: must be positive")
        self.eos_id, self.vocab_size, self.chunk_tokens = int(eos_id), vocab_size, chunk_tokens
        self.report = ReadReport()
        for f in self.files:
            self._array(f)  # fails early on unreadable files

    def describe(self) -> dict:
        """What decides this source's documents (for cache keys): format, files and options."""
        return {
            "format": self.format,
            "files": [str(f) for f in self.files],
            "dtype": self.dtype.name,
            "eos_id": self.eos_id,
            "vocab_size": self.vocab_size,
        }

    def _array(self, path: Path) -> np.ndarray:
        try:
            with path.open("rb") as fh:
                has_header = fh.read(len(NPY_MAGIC)) == NPY_MAGIC
            if atomic.is_remote(path):  # no memory map over an object store: read it whole
                data = path.read_bytes()
                arr = np.load(io.BytesIO(data)) if has_header else np.frombuffer(data, self.dtype)
            elif has_header:
                arr = np.load(path, mmap_mode="r")
            else:
                size = os.stat(path).st_size
                if size % self.dtype.itemsize:
                    raise ValueError(
                        f"its {size} bytes are not a whole number of {self.dtype.name} tokens "
                        "(wrong dtype, or a cut file?)"
                    )
                arr = np.memmap(path, dtype=self.dtype, mode="r") if size else np.zeros(0, self.dtype)
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a readable token file ({e})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "ui":
            raise ValueError(f"{path}: expected a flat integer token array, got {arr.dtype} {arr.shape}")
        return arr

    def _check_ids(self, path: Path, chunk: np.ndarray, offset: int) -> None:
        limit = INT32_LIMIT if self.vocab_size is None else min(self.vocab_size, INT32_LIMIT)
        outside = chunk >= limit
        if chunk.dtype.kind == "i":
            outside |= chunk < 0
        bad = np.flatnonzero(outside)
        if bad.size:
            i = int(bad[0])
            bound = f"vocab_size={self.vocab_size}" if self.vocab_size is not None else "the int32 range"
            raise ValueError(
                f"{path}: token id {int(chunk[i])} at token offset {offset + i} is outside [0, {limit}) "
                f"({bound}; {bad.size} such ids in tokens {offset}..{offset + len(chunk) - 1}); the "
                f"file was made with another vocabulary, or its tokens are not {chunk.dtype.name}"
            )

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[Document]:
        arr = self._array(path)
        n, start = len(arr), 0
        for pos in range(0, n, self.chunk_tokens):
            chunk = np.asarray(arr[pos : pos + self.chunk_tokens])
            self._check_ids(path, chunk, pos)  # before any document that ends in this chunk is handed on
            for end in (np.flatnonzero(chunk == self.eos_id) + pos).tolist():
                doc = self._document(path, arr, start, end)
                if doc is not None:
                    yield doc
                start = end + 1
        if start < n:
            yield self._document(path, arr, start, n)

    def _document(self, path: Path, arr: np.ndarray, start: int, end: int) -> Document | None:
        if end == start:
            self.report.problem(
                "empty", f"{path}:{start}", "empty document between two EOS tokens" if start else "file starts with EOS"
            )
            return None
        self.report.documents += 1
        return Document(f"{path.name}:{start}", tokens=np.asarray(arr[start:end], dtype=np.int32))


TokenFileSource = NpyTokenSource


class MarkovSource:
    """Documents drawn from the built-in Markov corpus (token ids, no files): ``markov:VOCAB:DOCS:LENGTH[:SEED]``."""

    format = "markov"

    def __init__(self, vocab_size: int, num_docs: int, doc_len: int, seed: int = 0):
        if num_docs < 1 or doc_len < 1:
            raise ValueError(f"markov source: num_docs={num_docs} and doc_len={doc_len} must be positive")
        self.chain = MarkovCorpus(vocab_size=vocab_size, seed=seed)
        self.vocab_size, self.num_docs, self.doc_len, self.seed = vocab_size, num_docs, doc_len, seed
        self.name = f"markov:{vocab_size}:{num_docs}:{doc_len}:{seed}"
        self.report = ReadReport()

    def describe(self) -> dict:
        return {"format": self.format, "name": self.name}

    @classmethod
    def from_spec(cls, spec: str) -> MarkovSource:
        try:
            parts = [int(x) for x in spec.split(":")[1:]]
        except ValueError:
            parts = []
        if len(parts) not in (3, 4):
            raise ValueError(f"source {spec!r}: expected markov:VOCAB:DOCS:LENGTH[:SEED] (integers)")
        return cls(*parts)

    def __iter__(self) -> Iterator[Document]:
        rows = self.chain.sample(self.num_docs, self.doc_len, np.random.default_rng([self.seed, 1]))
        for i, row in enumerate(rows):
            self.report.documents += 1
            yield Document(f"markov:{i}", tokens=row)
