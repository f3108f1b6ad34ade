"""Deterministic, random-access training rows: packed epochs of one corpus, and block mixtures of several.

Every row is a pure function of (seed, row index), so a run resumes exactly from its step number, any host can
build just the rows its devices hold, and nothing needs a shuffle buffer.

Packing: epoch ``e`` lays the documents out in a seeded permutation, each followed by EOS, back to back; the
epochs follow each other with no gap, so every document appears exactly once per epoch. Row ``r`` is the slice
``[r * L, (r + 1) * L)`` of that endless stream. Each row carries segment ids (1, 2, ... per document piece) and
positions (restarting at each piece) so attention never crosses documents, and a loss mask that skips the one
prediction that would cross a boundary (EOS -> the next document's first token).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from synpro_jax.data.corpus import TokenizedCorpus


@dataclasses.dataclass(frozen=True)
class Rows:
    tokens: np.ndarray  # [N, L] int32
    segment_ids: np.ndarray  # [N, L] int32, 1-based per row
    positions: np.ndarray  # [N, L] int32
    epochs: np.ndarray  # [N] the epoch each row starts in

    def training_batch(self) -> dict[str, np.ndarray]:
        """inputs/targets [N, L-1] with segment ids, positions and the cross-document loss mask."""
        seg = self.segment_ids
        return {
            "inputs": self.tokens[:, :-1],
            "targets": self.tokens[:, 1:],
            "segment_ids": seg[:, :-1],
            "positions": self.positions[:, :-1],
            "loss_mask": (seg[:, 1:] == seg[:, :-1]).astype(np.float32),
        }


class PackedStream:
    """Rows of ``row_len`` tokens from ``corpus`` repeated for epochs, reshuffled each epoch."""

    def __init__(self, corpus: TokenizedCorpus, row_len: int, eos_id: int, seed: int = 0, shuffle: bool = True):
        if corpus.num_docs == 0:
            raise ValueError("cannot pack an empty corpus")
        if row_len < 2:
            raise ValueError(f"row_len={row_len}: must be >= 2")
        self.corpus, self.row_len, self.eos_id = corpus, row_len, eos_id
        self.seed, self.shuffle = seed, shuffle
        self._lengths = corpus.lengths() + 1  # each document plus its EOS
        self.epoch_tokens = int(self._lengths.sum())

    @property
    def rows_per_epoch(self) -> float:
        return self.epoch_tokens / self.row_len

    @functools.lru_cache(maxsize=4)
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order, start offset of each placed document) for one epoch."""
        n = self.corpus.num_docs
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n))
        starts = np.concatenate([[0], np.cumsum(self._lengths[order])[:-1]])
        return order, starts

    def _fill(self, pos: int, out_tok, out_seg, out_pos) -> None:
        """Write row_len tokens starting at global stream position ``pos``."""
        filled, segment = 0, 0
        while filled < self.row_len:
            epoch, off = divmod(pos, self.epoch_tokens)
            order, starts = self._epoch(epoch)
            k = int(np.searchsorted(starts, off, side="right")) - 1
            doc = self.corpus.doc(order[k])
            within = off - int(starts[k])  # offset inside (document + EOS)
            take = min(len(doc) + 1 - within, self.row_len - filled)
            piece = np.empty(take, np.int32)
            from_doc = max(0, min(take, len(doc) - within))
            piece[:from_doc] = doc[within:within + from_doc]
            piece[from_doc:] = self.eos_id  # at most one EOS: the document's end
            segment += 1
            out_tok[filled:filled + take] = piece
            out_seg[filled:filled + take] = segment
            out_pos[filled:filled + take] = np.arange(take)
            filled += take
            pos += take

    def rows(self, indices) -> Rows:
        indices = np.asarray(indices, np.int64)
        n, length = len(indices), self.row_len
        tok = np.empty((n, length), np.int32)
        seg = np.empty((n, length), np.int32)
        pos = np.empty((n, length), np.int32)
        for j, r in enumerate(indices):
            self._fill(int(r) * length, tok[j], seg[j], pos[j])
        epochs = (indices * length) // self.epoch_tokens
        return Rows(tok, seg, pos, epochs)

    def epoch_doc_order(self, epoch: int) -> list[str]:
        order, _ = self._epoch(epoch)
        return [self.corpus.doc_ids[i] for i in order]


def largest_remainder(rates, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``rates`` (Hamilton's method)."""
    rates = np.asarray(rates, np.float64)
    if np.any(rates < 0) or rates.sum() <= 0:
        raise ValueError(f"mixture rates {rates.tolist()}: need non-negative rates with a positive sum")
    exact = rates / rates.sum() * total
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


class MixedStream:
    """Rows drawn from several packed streams at fixed rates, block-deterministically.

    Every block of ``block_rows`` rows holds exactly ``counts[i]`` rows of stream ``i`` (rates rounded by largest
    remainder), in a seeded order within the block. Row ``g`` is found without touching any other row.
    """

    def __init__(self, streams: list[PackedStream], rates, names: list[str] | None = None, block_rows: int = 1024,
                 seed: int = 0):
        if len(streams) != len(rates):
            raise ValueError(f"{len(streams)} streams but {len(rates)} rates")
        row_lens = {s.row_len for s in streams}
        if len(row_lens) != 1:
            raise ValueError(f"streams pack to different row lengths {sorted(row_lens)}")
        self.streams, self.block_rows, self.seed = streams, block_rows, seed
        self.names = names or [f"stream{i}" for i in range(len(streams))]
        self.counts = largest_remainder(rates, block_rows)
        self.row_len = row_lens.pop()

    @property
    def rates(self) -> np.ndarray:
        return self.counts / self.block_rows

    @functools.lru_cache(maxsize=8)
    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(stream of each slot, index of the slot among its stream's slots) for one block."""
        slots = np.repeat(np.arange(len(self.streams)), self.counts)
        slots = np.random.default_rng([self.seed, 7919, block]).permutation(slots)
        rank = np.empty_like(slots)
        for i in range(len(self.streams)):
            where = np.flatnonzero(slots == i)
            rank[where] = np.arange(len(where))
        return slots, rank

    def locate(self, g: int) -> tuple[int, int]:
        """(stream, row index within that stream) of global row ``g``."""
        block, slot = divmod(int(g), self.block_rows)
        slots, rank = self._block(block)
        stream = int(slots[slot])
        return stream, block * int(self.counts[stream]) + int(rank[slot])

    def rows(self, indices) -> tuple[Rows, np.ndarray]:
        """The rows at global ``indices`` and the stream each came from."""
        located = [self.locate(g) for g in indices]
        which = np.array([s for s, _ in located], np.int32)
        n, length = len(located), self.row_len
        tok = np.empty((n, length), np.int32)
        seg = np.empty((n, length), np.int32)
        pos = np.empty((n, length), np.int32)
        epochs = np.empty(n, np.int64)
        for j, (s, r) in enumerate(located):
            one = self.streams[s].rows([r])
            tok[j], seg[j], pos[j], epochs[j] = one.tokens[0], one.segment_ids[0], one.positions[0], one.epochs[0]
        return Rows(tok, seg, pos, epochs), which
