"""Deterministic, random-access training rows: packed epochs of one corpus (mixtures: ``mixture.py``).

Every row is a pure function of (seed, row index), so a run resumes exactly from its step number, any host can
build just the rows its devices hold, and nothing needs a shuffle buffer.

Packing: epoch ``e`` lays the documents out in a seeded permutation, each followed by EOS, back to back; the
epochs follow each other with no gap, so every document appears exactly once per epoch. Row ``r`` is the slice
``[r * L, (r + 1) * L)`` of that endless stream. Each row carries segment ids (1, 2, ... per document piece) and
positions (restarting at each piece) so attention never crosses documents, and a loss mask that skips the one
prediction that would cross a boundary (EOS -> the next document's first token): :meth:`Rows.training_batch`,
pretraining's layout. :meth:`Rows.concatenated_batch` is OLMo's instead (the release's probe trains on it): the
row is one plain sequence, documents attend to each other and positions run on across them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from synpro_jax.data.corpus import TokenizedCorpus

TRAINING_FEATURES = ("inputs", "targets", "segment_ids", "positions", "loss_mask")  # Rows.training_batch()


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

    def concatenated_batch(self) -> dict[str, np.ndarray]:
        """OLMo's layout of an L-token slice, without document masking: inputs are the row's L tokens, one
        segment, positions 0..L-1 running on across documents (which attend to each other); target t is token
        t + 1, every one counts, including the next document's first token after an EOS. The last position's
        next token starts the next row, so it has no target (token 0, masked), as OLMo drops the last logits.
        All [N, L]."""
        n, length = self.tokens.shape
        targets = np.zeros((n, length), np.int32)
        targets[:, :-1] = self.tokens[:, 1:]
        mask = np.ones((n, length), np.float32)
        mask[:, -1] = 0.0
        return {
            "inputs": self.tokens,
            "targets": targets,
            "segment_ids": np.ones((n, length), np.int32),
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy(),
            "loss_mask": mask,
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
        # Per stream, not a class-wide LRU: a mixture of many streams must not evict each other's epochs.
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.epochs_built = 0

    @property
    def rows_per_epoch(self) -> float:
        return self.epoch_tokens / self.row_len

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order, start offset of each placed document) for one epoch; two are kept (a row
        spans at most two epochs while reading forward)."""
        hit = self._epochs.get(epoch)
        if hit is not None:
            return hit
        n = self.corpus.num_docs
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        starts = np.concatenate([[0], np.cumsum(self._lengths[order])[:-1]])
        if len(self._epochs) >= 2:
            self._epochs.pop(max(self._epochs, key=lambda e: abs(e - epoch)))  # the farthest from this one
        self._epochs[epoch] = (order, starts)
        self.epochs_built += 1
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
            piece[:from_doc] = doc[within : within + from_doc]
            piece[from_doc:] = self.eos_id  # at most one EOS: the document's end
            segment += 1
            out_tok[filled : filled + take] = piece
            out_seg[filled : filled + take] = segment
            out_pos[filled : filled + take] = np.arange(take)
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
