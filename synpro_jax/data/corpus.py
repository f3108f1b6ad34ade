"""Tokenized corpora in memory and their on-disk cache.

A :class:`TokenizedCorpus` holds every document's tokens in one flat int32 array with offsets, so packing and
epoch shuffles are index arithmetic. Building one from a source is the slow part; :func:`build_corpus` caches
the result atomically under a key of (source files, sizes, mtimes, vocabulary) and reuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import hashlib
import json
import logging
import os

from etils.epath import Path
import numpy as np
from tqdm.auto import tqdm

from synpro_jax import atomic, heartbeat
from synpro_jax.data.sources import Document, ReadReport

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TokenizedCorpus:
    tokens: np.ndarray  # int32, all documents back to back (no separators)
    offsets: np.ndarray  # int64 [num_docs + 1]; document i is tokens[offsets[i]:offsets[i + 1]]
    doc_ids: list[str]

    def __post_init__(self):
        if len(self.offsets) != len(self.doc_ids) + 1:
            raise ValueError(f"corpus has {len(self.doc_ids)} ids but {len(self.offsets) - 1} documents")

    @property
    def num_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def from_token_lists(cls, docs: Sequence[np.ndarray | Sequence[int]], doc_ids: Sequence[str]) -> TokenizedCorpus:
        lengths = np.array([len(d) for d in docs], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate([np.asarray(d, np.int32) for d in docs]) if len(docs) else np.zeros(0, np.int32)
        return cls(tokens.astype(np.int32), offsets, list(doc_ids))

    def subset(self, indices: Sequence[int], last_len: int | None = None) -> TokenizedCorpus:
        """The documents at ``indices`` (in that order); ``last_len`` truncates the final one."""
        docs = [self.doc(i) for i in indices]
        if last_len is not None and docs:
            docs[-1] = docs[-1][:last_len]
        return TokenizedCorpus.from_token_lists(docs, [self.doc_ids[i] for i in indices])

    def save(self, path: Path) -> None:
        """Atomic write of an ``.npz`` (tokens, offsets, ids)."""
        atomic.write_file(
            path,
            lambda tmp: np.savez(
                tmp, tokens=self.tokens, offsets=self.offsets, doc_ids=np.array(self.doc_ids, dtype=np.str_)
            ),
            suffix=".npz",
        )

    @classmethod
    def load(cls, path: Path) -> TokenizedCorpus:
        with atomic.load_npz(path) as z:
            return cls(z["tokens"], z["offsets"], [str(i) for i in z["doc_ids"]])


def tokenize_documents(
    docs: Iterable[Document],
    encode_batch: Callable[[list[str]], list[list[int]]],
    batch_size: int = 512,
    progress: bool = False,
    desc: str = "tokenize",
    report: ReadReport | None = None,
) -> TokenizedCorpus:
    """Encode text documents in batches (pre-tokenized ones pass through). A document that encodes to no tokens
    is left out and counted in ``report`` as empty, with its id (file:line)."""
    token_lists: list[np.ndarray] = []
    ids: list[str] = []
    pending: list[Document] = []

    def flush():
        texts = [d.text for d in pending]
        for d, toks in zip(pending, encode_batch(texts)):
            if len(toks):
                token_lists.append(np.asarray(toks, np.int32))
                ids.append(d.id)
            elif report is not None:
                report.documents -= 1  # the source counted it as kept
                report.problem("empty", d.id, "the text encodes to no tokens")
            else:
                log.warning("skipped %s: the text encodes to no tokens", d.id)
        pending.clear()

    bar = tqdm(desc=desc, unit="doc", disable=not progress)
    for doc in docs:
        bar.update(1)
        heartbeat.beat()  # tokenizing a large corpus can outlast a supervisor's stale timeout
        if doc.tokens is not None:
            if len(doc.tokens):
                token_lists.append(doc.tokens.astype(np.int32))
                ids.append(doc.id)
            elif report is not None:
                report.documents -= 1
                report.problem("empty", doc.id, "no tokens")
            continue
        pending.append(doc)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    bar.close()
    return TokenizedCorpus.from_token_lists(token_lists, ids)


def encoder_for(vocab) -> Callable[[list[str]], list[list[int]]]:
    """A batch encoder for a seqio vocabulary (fast paths for HF tokenizers and SentencePiece)."""
    if hasattr(vocab, "encode_batch"):
        return vocab.encode_batch
    sp = getattr(vocab, "tokenizer", None)
    if sp is not None and hasattr(sp, "encode"):
        return lambda texts: sp.encode(texts)  # SentencePieceProcessor encodes a list in one call
    return lambda texts: [vocab.encode(t) for t in texts]


def _fingerprint(source, vocab) -> str:
    """The cache key: what the source reads (its describe(): format, files, fields, dtype...), the files' sizes and
    mtimes, and the vocabulary (with its model file's hash)."""
    parts = {
        "cache_format": 3,
        "source": type(source).__name__,
        "vocab": type(vocab).__name__,
        "vocab_size": vocab.vocab_size,
        "eos": vocab.eos_id,
    }
    if hasattr(source, "describe"):
        parts["describe"] = source.describe()
    files = getattr(source, "files", None)
    if files:
        parts["files"] = [atomic.file_fingerprint(f) for f in files]
    for attr in ("text_field", "id_field", "split", "name", "eos_id"):
        if hasattr(source, attr):
            parts[attr] = getattr(source, attr)
    vocab_file = getattr(vocab, "sentencepiece_model_file", None) or getattr(vocab, "_path", None)
    if vocab_file and Path(vocab_file).exists():
        parts["vocab_file_sha1"] = hashlib.sha1(Path(vocab_file).read_bytes()).hexdigest()
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_corpus(
    source, vocab, cache_dir: str | os.PathLike | None = None, name: str = "corpus", progress: bool = True
) -> tuple[TokenizedCorpus, ReadReport | None]:
    """Tokenize ``source`` with ``vocab``, reusing a cached copy when the inputs are unchanged.

    Returns the corpus and the source's read report (None when it came from the cache: the report of the pass
    that built it is stored beside it as ``.report.txt``).
    """
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{name}-{_fingerprint(source, vocab)}.npz"
        if cache.exists():
            log.info("using cached corpus %s", cache)
            return TokenizedCorpus.load(cache), None
    report = getattr(source, "report", None)
    corpus = tokenize_documents(source, encoder_for(vocab), progress=progress, desc=f"tokenize {name}", report=report)
    if report is not None:
        log.info("%s: %s", name, report.summary())
    if cache is not None:
        corpus.save(cache)
        if report is not None:
            atomic.write_text(cache.with_suffix(".report.txt"), report.summary() + "\n")
    return corpus, report


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats/token) of the empirical token distribution: the loss of a model that ignores context."""
    counts = np.bincount(tokens.astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
