"""Block-deterministic mixtures of packed streams, and the mixing rates a run asks for.

Every block of ``block_rows`` rows holds a fixed number of rows of each stream (the rates rounded by largest
remainder), in a seeded order within the block. Rows are all the same length, so row shares are token shares,
and global row ``g`` is found without touching any other row: a run resumes from its step number alone.

A stage that continues another run's data (a SynPro round after the previous one) reads each stream from where
the previous stage left it: :meth:`MixedStream.starting_at` shifts each stream's rows by its start, so the
mixture's block order is unchanged and stream ``i``'s ``k``-th row in the stage is its row ``starts[i] + k``.
:meth:`MixedStream.continuing` finds the starts from the previous stage's report (:meth:`MixedStream.report`):
a stream continues only where it is the same stream (:func:`stream_identity`); a new one starts at row 0.
"""

from __future__ import annotations

from collections.abc import Mapping
import copy
import hashlib
import json
import math

import numpy as np

from synpro_jax.data.packing import PackedStream, Rows


def stream_identity(stream: PackedStream) -> str:
    """What makes two packed streams the same token for token at every position: the documents (ids and
    lengths), EOS, and the packing seed and shuffle. The row length is not part of it: positions are carried in
    tokens."""
    c = stream.corpus
    h = hashlib.sha1(
        json.dumps([int(stream.seed), bool(stream.shuffle), int(stream.eos_id), c.num_docs, int(c.num_tokens)]).encode()
    )
    h.update(np.ascontiguousarray(c.lengths(), np.int64).tobytes())
    h.update("\n".join(c.doc_ids).encode())
    return h.hexdigest()[:16]


def unique_tokens(stream: PackedStream, start_row: int, end_row: int) -> int:
    """The distinct document tokens (EOS not counted) in rows ``[start_row, end_row)`` of ``stream``: a token
    read in two epochs counts once, so a span holding a whole epoch has read the corpus's ``num_tokens``."""
    length, epoch_tokens = stream.row_len, stream.epoch_tokens
    a, b = int(start_row) * length, int(end_row) * length
    if b <= a:
        return 0
    if -(-a // epoch_tokens) * epoch_tokens + epoch_tokens <= b:  # a whole epoch lies inside the span
        return int(stream.corpus.num_tokens)
    lengths = stream.corpus.lengths().astype(np.int64)  # without EOS
    covered = []  # per epoch touched (at most two): each document's covered [lo, hi) in its own coordinates
    for epoch in range(a // epoch_tokens, (b - 1) // epoch_tokens + 1):
        order, starts = stream._epoch(epoch)
        lo, hi = max(a - epoch * epoch_tokens, 0), min(b - epoch * epoch_tokens, epoch_tokens)
        doc_lo, doc_hi = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
        doc_lo[order] = np.clip(lo - starts, 0, lengths[order])
        doc_hi[order] = np.clip(hi - starts, 0, lengths[order])
        covered.append((doc_lo, np.maximum(doc_hi, doc_lo)))
    total = sum(int((h - lo).sum()) for lo, h in covered)
    if len(covered) == 2:
        (l1, h1), (l2, h2) = covered
        total -= int(np.maximum(np.minimum(h1, h2) - np.maximum(l1, l2), 0).sum())
    return total


def largest_remainder(rates, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``rates`` (Hamilton's method)."""
    rates = np.asarray(rates, np.float64)
    if np.any(rates < 0) or rates.sum() <= 0:
        raise ValueError(f"mixture rates {rates.tolist()}: need non-negative rates with a positive sum")
    exact = rates / rates.sum() * total
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def resolve_rates(
    mixing: str | Mapping[str, float], token_counts: Mapping[str, int], short_names: Mapping[str, str]
) -> dict[str, float]:
    """Each task's rate: ``"tokens"`` weighs tasks by their token counts; a mapping gives them by short name
    (``{"organic": 3, "rephrase_r1": 1}``) or full task name. ``short_names`` maps task name -> short name."""
    if mixing == "tokens":
        return {n: float(c) for n, c in token_counts.items()}
    if not isinstance(mixing, Mapping):
        raise ValueError(
            f"DataConfig.mixing={mixing!r}: expected 'tokens' or a dict of rates "
            "such as {'organic': 3, 'rephrase_r1': 1}"
        )
    known = set(token_counts) | set(short_names.values())
    unknown = sorted(set(mixing) - known)
    if unknown:
        raise ValueError(
            f"DataConfig.mixing names {unknown}, which are not in this run's tasks {sorted(short_names.values())}"
        )
    out = {}
    for name in token_counts:
        short = short_names[name]
        rate = mixing.get(short, mixing.get(name))
        if rate is None:
            raise ValueError(f"DataConfig.mixing={dict(mixing)!r} gives no rate for {short!r} ({name})")
        if not isinstance(rate, (int, float)) or rate < 0:
            raise ValueError(f"DataConfig.mixing[{short!r}]={rate!r}: must be a non-negative number")
        out[name] = float(rate)
    return out


class MixedStream:
    """Rows drawn from several packed streams at fixed rates, block-deterministically."""

    def __init__(
        self,
        streams: list[PackedStream],
        rates,
        names: list[str] | None = None,
        block_rows: int = 1024,
        seed: int = 0,
        starts=None,
    ):
        if len(streams) != len(rates):
            raise ValueError(f"{len(streams)} streams but {len(rates)} rates")
        row_lens = {s.row_len for s in streams}
        if len(row_lens) != 1:
            raise ValueError(f"streams pack to different row lengths {sorted(row_lens)}")
        self.streams, self.block_rows, self.seed = streams, block_rows, seed
        self.names = names or [f"stream{i}" for i in range(len(streams))]
        self.counts = largest_remainder(rates, block_rows)
        self.row_len = row_lens.pop()
        self.starts = self._check_starts(starts)
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._identities: list[str] | None = None

    def _check_starts(self, starts) -> np.ndarray:
        out = (
            np.zeros(len(self.streams), np.int64)
            if starts is None or len(starts) == 0
            else np.asarray(starts, np.int64)
        )
        if out.shape != (len(self.streams),) or (out < 0).any():
            raise ValueError(
                f"stream starts {list(np.asarray(starts).tolist())}: one non-negative row per stream "
                f"({len(self.streams)} streams)"
            )
        return out

    def starting_at(self, starts) -> MixedStream:
        """This mixture with stream ``i`` read from its row ``starts[i]`` on (the same packed streams, the same
        block order)."""
        out = copy.copy(self)
        out.starts, out._blocks = self._check_starts(starts), {}
        return out

    def detached(self) -> MixedStream:
        """The same mixture on packed streams of its own (their epoch caches too): for counting what a stage
        read on one thread while another reads rows."""
        out = copy.copy(self)
        out.streams = [
            PackedStream(s.corpus, s.row_len, s.eos_id, seed=s.seed, shuffle=s.shuffle) for s in self.streams
        ]
        out._blocks = {}
        return out

    @property
    def identities(self) -> list[str]:
        if self._identities is None:
            self._identities = [stream_identity(s) for s in self.streams]
        return self._identities

    def continuing(self, previous: Mapping | None) -> tuple[np.ndarray, dict[str, str]]:
        """(start row of each stream, how each starts) for a stage that continues ``previous``: per stream name,
        the token position the previous stage reached, as an int or ``{"tokens": n, "stream": identity}``
        (:meth:`report`'s ``position_tokens`` and ``stream``). A stream continues ("continued") from the first
        row not yet read (``ceil(tokens / row_len)``) when it is named with the same identity; it starts at row 0
        when it is not named ("new") or names another stream ("changed": other documents, such as an oracle
        run's larger budget)."""
        starts, how = np.zeros(len(self.streams), np.int64), {}
        for i, name in enumerate(self.names):
            entry = (previous or {}).get(name)
            if entry is None:
                how[name] = "new"
                continue
            tokens, identity = (
                (entry, None) if isinstance(entry, (int, np.integer)) else (entry["tokens"], entry.get("stream"))
            )
            if isinstance(tokens, bool) or int(tokens) != tokens or tokens < 0:
                raise ValueError(f"data start of {name}: {entry!r}; give a non-negative token position")
            if identity is not None and identity != self.identities[i]:
                how[name] = "changed"
                continue
            starts[i], how[name] = math.ceil(int(tokens) / self.row_len), "continued"
        return starts, how

    def rows_read(self, n: int) -> np.ndarray:
        """How many rows of each stream the global rows ``[0, n)`` hold."""
        full, rest = divmod(int(n), self.block_rows)
        out = full * self.counts
        if rest:
            slots, _ = self._block(full)
            out = out + np.bincount(slots[:rest], minlength=len(self.streams))
        return out.astype(np.int64)

    def report(self, n: int) -> dict[str, dict]:
        """Per stream, what the global rows ``[0, n)`` read: its rows ``[start_row, end_row)``, their tokens, the
        distinct document tokens among them (:func:`unique_tokens`), the epochs they fall in, and the position the
        next stage continues from (``position_tokens``, with the stream's identity)."""
        out = {}
        for i, (name, rows) in enumerate(zip(self.names, self.rows_read(n))):
            stream, start = self.streams[i], int(self.starts[i])
            end, length, epoch = start + int(rows), stream.row_len, stream.epoch_tokens
            out[name] = {
                "start_row": start,
                "rows": int(rows),
                "end_row": end,
                "row_len": length,
                "tokens": int(rows) * length,
                "unique_tokens": unique_tokens(stream, start, end),
                "epoch_tokens": epoch,
                "epochs": [start * length // epoch, (end * length - 1) // epoch] if rows else [],
                "position_tokens": end * length,
                "stream": self.identities[i],
            }
        return out

    @property
    def rates(self) -> np.ndarray:
        return self.counts / self.block_rows

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream of each slot, index of the slot among its stream's slots) for one block."""
        hit = self._blocks.get(block)
        if hit is not None:
            return hit
        slots = np.repeat(np.arange(len(self.streams)), self.counts)
        slots = np.random.default_rng([self.seed, 7919, block]).permutation(slots)
        rank = np.empty_like(slots)
        for i in range(len(self.streams)):
            where = np.flatnonzero(slots == i)
            rank[where] = np.arange(len(where))
        if len(self._blocks) >= 4:
            self._blocks.pop(next(iter(self._blocks)))
        self._blocks[block] = (slots, rank)
        return slots, rank

    def locate(self, g: int) -> tuple[int, int]:
        """(stream, row index within that stream) of global row ``g``."""
        block, slot = divmod(int(g), self.block_rows)
        slots, rank = self._block(block)
        stream = int(slots[slot])
        return stream, int(self.starts[stream]) + block * int(self.counts[stream]) + int(rank[slot])

    def rows(self, indices) -> tuple[Rows, np.ndarray]:
        """The rows at global ``indices`` and the stream each came from."""
        located = np.array([self.locate(g) for g in indices], np.int64).reshape(-1, 2)
        which = located[:, 0].astype(np.int32)
        n, length = len(located), self.row_len
        tok = np.empty((n, length), np.int32)
        seg = np.empty((n, length), np.int32)
        pos = np.empty((n, length), np.int32)
        epochs = np.empty(n, np.int64)
        for s in np.unique(which):  # one call per stream, rows in their global order
            at = np.flatnonzero(which == s)
            part = self.streams[s].rows(located[at, 1])
            tok[at], seg[at], pos[at], epochs[at] = part.tokens, part.segment_ids, part.positions, part.epochs
        return Rows(tok, seg, pos, epochs), which
