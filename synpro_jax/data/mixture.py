"""Block-deterministic mixtures of packed streams, and the mixing rates a run asks for.

Every block of ``block_rows`` rows holds a fixed number of rows of each stream (the rates rounded by largest
remainder), in a seeded order within the block. Rows are all the same length, so row shares are token shares,
and global row ``g`` is found without touching any other row: a run resumes from its step number alone.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from synpro_jax.data.packing import PackedStream, Rows


def largest_remainder(rates, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``rates`` (Hamilton's method)."""
    rates = np.asarray(rates, np.float64)
    if np.any(rates < 0) or rates.sum() <= 0:
        raise ValueError(f"mixture rates {rates.tolist()}: need non-negative rates with a positive sum")
    exact = rates / rates.sum() * total
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def resolve_rates(mixing: str | Mapping[str, float], token_counts: Mapping[str, int],
                  short_names: Mapping[str, str]) -> dict[str, float]:
    """Each task's rate: ``"tokens"`` weighs tasks by their token counts; a mapping gives them by short name
    (``{"organic": 3, "rephrase_r1": 1}``) or full task name. ``short_names`` maps task name -> short name."""
    if mixing == "tokens":
        return {n: float(c) for n, c in token_counts.items()}
    if not isinstance(mixing, Mapping):
        raise ValueError(f"DataConfig.mixing={mixing!r}: expected 'tokens' or a dict of rates "
                         "such as {'organic': 3, 'rephrase_r1': 1}")
    known = set(token_counts) | set(short_names.values())
    unknown = sorted(set(mixing) - known)
    if unknown:
        raise ValueError(f"DataConfig.mixing names {unknown}, which are not in this run's tasks "
                         f"{sorted(short_names.values())}")
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
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

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
        return stream, block * int(self.counts[stream]) + int(rank[slot])

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
