"""How diverse a stream of texts is: the "no collapse" check on synthetic data.

SynPro claims that training generators to rephrase and reformat organic documents, round after round, does not
collapse the synthetic distribution (the same phrasings, templates or near-copies over and over). Three cheap,
model-free measures make that visible when a synthetic stream is set beside the organic documents it rewrote:

- distinct-n: the share of distinct word n-grams among all word n-grams (n-grams do not cross records); a
  collapsing generator repeats itself, so the share falls;
- the compression ratio: zlib (level 9) bytes over raw UTF-8 bytes of the records joined with newlines;
  repetitive text compresses better, so the ratio falls;
- the near-duplicate share: the share of records whose set of word ``shingle``-grams has a Jaccard similarity of
  at least ``near_duplicate`` with some other record's; mode collapse shows up as near-copies.

Words are lower-cased ``\\w+`` runs. The near-duplicate search is quadratic at worst, so past ``max_records`` it
runs on a seeded sample of the records (``sampled``); it finds candidates through an inverted index of shingles
and counts shared shingles per candidate, so only records that share a shingle are ever compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import itertools
import re
import zlib

import numpy as np

__all__ = ["diversity", "compare", "words"]

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The ``\\w+`` runs of a text, lower-cased."""
    return [w.lower() for w in _WORD.findall(text)]


class _Words:
    """The records' words as integer ids, end to end, and the word n-grams that stay inside a record."""

    def __init__(self, tokenized: list[list[str]]):
        flat = list(itertools.chain.from_iterable(tokenized))
        vocab = {w: i for i, w in enumerate(dict.fromkeys(flat))}
        self.size = len(vocab)
        self.ids = np.fromiter(map(vocab.__getitem__, flat), np.int64, len(flat))
        self.lengths = np.fromiter(map(len, tokenized), np.int64, len(tokenized))
        self.record = np.repeat(np.arange(len(tokenized), dtype=np.int64), self.lengths)

    def grams(self, ks: set[int]) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
        """For each k in ``ks``: (the start of every k-gram inside a record, an id per k-gram, equal k-grams equal
        ids, and how many distinct ids). A k-gram's id comes from its (k-1)-gram's id and its last word."""
        out = {}
        ends = np.cumsum(self.lengths)[self.record]
        pos, ids, count = np.arange(len(self.ids)), self.ids, self.size
        prev = ids
        for k in range(1, max(ks) + 1):
            if k > 1:
                pos = pos[pos + k <= ends[pos]]
                uniq, ids = np.unique(prev[pos] * max(self.size, 1) + self.ids[pos + k - 1], return_inverse=True)
                count = len(uniq)
                prev = np.empty(len(self.ids), np.int64)
                prev[pos] = ids
            if k in ks:
                out[k] = (pos, ids.reshape(-1), count)
        return out


def _shingle_sets(
    text: _Words, grams: tuple[np.ndarray, np.ndarray, int], tokenized: list[list[str]], k: int, rows: np.ndarray
) -> list[np.ndarray]:
    """Each chosen record's set of word k-gram ids, sorted; a record shorter than k is one shingle (its words)."""
    pos, ids, count = grams
    owner = text.record[pos]
    short, whole = {}, {}
    for r in np.flatnonzero(text.lengths < k).tolist():
        short[r] = count + whole.setdefault(tuple(tokenized[r]), len(whole))
    chosen = np.zeros(len(text.lengths), dtype=bool)
    chosen[rows] = True
    keep = chosen[owner]
    owner, ids = owner[keep], ids[keep]
    order = np.lexsort((ids, owner))
    owner, ids = owner[order], ids[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = (owner[1:] != owner[:-1]) | (ids[1:] != ids[:-1])
    owner, ids = owner[first], ids[first]
    bounds = np.searchsorted(owner, rows, side="left"), np.searchsorted(owner, rows, side="right")
    return [np.asarray([short[r]], np.int64) if r in short else ids[lo:hi] for r, lo, hi in zip(rows.tolist(), *bounds)]


def _near_duplicates(sets: list[np.ndarray], threshold: float) -> np.ndarray:
    """Whether each set (sorted distinct ids) has Jaccard >= threshold with at least one other set; exact, with
    candidates found through the sets' shared ids."""
    flagged = np.zeros(len(sets), dtype=bool)
    # Identical sets first: all duplicates of each other; searching one of them stands for all.
    groups: dict[bytes, list[int]] = {}
    for i, s in enumerate(sets):
        groups.setdefault(s.tobytes(), []).append(i)
    uniques = [sets[members[0]] for members in groups.values()]
    # Inverted index over the distinct sets (CSR): id -> the sets holding it.
    sizes = np.asarray([len(s) for s in uniques], dtype=np.int64)
    flat = np.concatenate(uniques) if uniques else np.zeros(0, np.int64)
    order = np.argsort(flat, kind="stable")
    posting = np.repeat(np.arange(len(uniques), dtype=np.int64), sizes)[order]
    counts = np.bincount(flat, minlength=int(flat.max()) + 1 if len(flat) else 0)
    starts = np.cumsum(counts) - counts
    hit = np.asarray([len(members) > 1 for members in groups.values()], dtype=bool)
    for u, items in enumerate(uniques):
        if hit[u]:  # already known; any set it matches finds it in its own search
            continue
        lengths = counts[items]
        # the postings of u's ids gathered: the start of each one's run plus the offsets within it
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids, shared = np.unique(posting[np.repeat(starts[items], lengths) + offsets], return_counts=True)
        keep = ids != u
        ids, shared = ids[keep], shared[keep]
        match = shared / (sizes[u] + sizes[ids] - shared) >= threshold
        if match.any():
            hit[u] = True
            hit[ids[match]] = True
    for u, members in enumerate(groups.values()):
        flagged[members] = hit[u]
    return flagged


def diversity(
    texts: Sequence[str],
    *,
    ngrams: Sequence[int] = (1, 2, 3, 4),
    shingle: int = 5,
    near_duplicate: float = 0.8,
    max_records: int | None = 2000,
    seed: int = 0,
) -> dict:
    """Diversity of a list of texts, as a JSON-able dict::

        {"records": n, "tokens": word tokens, "distinct": {"1": distinct-1, ...}, "compression_ratio": r,
         "near_duplicate_share": s, "sampled": bool}

    ``distinct[n]`` is None when no record has n words; with no records, every measure is None. When there are
    more than ``max_records`` records, the near-duplicate share is over a seeded sample of ``max_records`` of them
    (``sampled``: True); distinct-n and the compression ratio always use every record.
    """
    texts = list(texts)
    n = len(texts)
    if shingle < 1 or any(k < 1 for k in ngrams):
        raise ValueError(f"diversity: shingle={shingle} and ngrams={tuple(ngrams)} must be >= 1")
    if max_records is not None and max_records < 1:
        raise ValueError(f"diversity: max_records={max_records} must be >= 1 or None")
    if n == 0:
        return {
            "records": 0,
            "tokens": 0,
            "distinct": {str(k): None for k in ngrams},
            "compression_ratio": None,
            "near_duplicate_share": None,
            "sampled": False,
        }
    tokenized = [words(t) for t in texts]
    text = _Words(tokenized)
    grams = text.grams({*ngrams, shingle})
    distinct = {str(k): grams[k][2] / len(grams[k][0]) if len(grams[k][0]) else None for k in ngrams}
    raw = "\n".join(texts).encode("utf-8")
    compression = len(zlib.compress(raw, 9)) / len(raw) if raw else None
    sampled = max_records is not None and n > max_records
    rows = np.sort(np.random.default_rng(seed).choice(n, max_records, replace=False)) if sampled else np.arange(n)
    flagged = _near_duplicates(_shingle_sets(text, grams[shingle], tokenized, shingle, rows), near_duplicate)
    return {
        "records": n,
        "tokens": int(text.lengths.sum()),
        "distinct": distinct,
        "compression_ratio": compression,
        "near_duplicate_share": float(flagged.mean()),
        "sampled": bool(sampled),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def compare(streams: Mapping[str, Sequence[str]], reference: str = "organic", **kwargs) -> dict:
    """:func:`diversity` of each stream (``kwargs`` go to it), and for every stream but ``reference``, how it
    stands against the reference::

        {name: {**diversity, "vs_reference": {"distinct": {n: stream / reference}, "compression_ratio":
                stream / reference, "near_duplicate_share_diff": stream - reference}}}

    Ratios below 1 (and a positive difference) mean the stream is less diverse than the reference; a value is
    None where either side is None (or the reference's is 0)."""
    if reference not in streams:
        raise KeyError(f"compare: no reference stream {reference!r} among {sorted(streams)}")
    out = {name: diversity(texts, **kwargs) for name, texts in streams.items()}
    ref = out[reference]
    for name, d in out.items():
        if name == reference:
            continue
        a, b = d["near_duplicate_share"], ref["near_duplicate_share"]
        d["vs_reference"] = {
            "distinct": {k: _ratio(v, ref["distinct"].get(k)) for k, v in d["distinct"].items()},
            "compression_ratio": _ratio(d["compression_ratio"], ref["compression_ratio"]),
            "near_duplicate_share_diff": None if a is None or b is None else a - b,
        }
    return out
