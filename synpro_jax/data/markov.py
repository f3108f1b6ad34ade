"""A seeded first-order Markov corpus with a known entropy rate.

It needs no files, so the default ``synpro train`` job runs anywhere, and a model's loss can be read against a
true floor: the chain's entropy rate (what a perfect model reaches) and its unigram entropy (what a model that
ignores context reaches).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class MarkovCorpus:
    vocab_size: int = 256
    concentration: float = 0.05  # Dirichlet alpha of each row: smaller means more predictable next tokens
    seed: int = 0

    def __post_init__(self):
        if self.vocab_size < 2:
            raise ValueError(f"MarkovCorpus.vocab_size={self.vocab_size}: must be >= 2")
        if self.concentration <= 0:
            raise ValueError(f"MarkovCorpus.concentration={self.concentration}: must be positive")
        rng = np.random.default_rng(self.seed)
        self.transition = rng.dirichlet(np.full(self.vocab_size, self.concentration), size=self.vocab_size)
        self._cdf = np.cumsum(self.transition, axis=1)
        self._cdf[:, -1] = 1.0
        pi = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for _ in range(10_000):  # power iteration to the stationary distribution
            nxt = pi @ self.transition
            if np.abs(nxt - pi).max() < 1e-13:
                break
            pi = nxt
        self.stationary = nxt

    @property
    def entropy_rate(self) -> float:
        """Nats per token of the best possible predictor (knows the previous token)."""
        p = self.transition
        row_h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        return float(self.stationary @ row_h)

    @property
    def unigram_entropy(self) -> float:
        """Nats per token of a predictor that ignores context."""
        pi = self.stationary[self.stationary > 0]
        return float(-np.sum(pi * np.log(pi)))

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """[batch, length] int32 rows, each started from the stationary distribution."""
        out = np.empty((batch, length), np.int32)
        out[:, 0] = rng.choice(self.vocab_size, size=batch, p=self.stationary)
        u = rng.random((batch, length))
        for t in range(1, length):
            rows = self._cdf[out[:, t - 1]]
            out[:, t] = np.minimum((rows < u[:, t, None]).sum(axis=1), self.vocab_size - 1)
        return out

    def batches(self, batch: int, length: int, seed: int = 0):
        """Endless [batch, length] token rows."""
        rng = np.random.default_rng(seed)
        while True:
            yield self.sample(batch, length, rng)
