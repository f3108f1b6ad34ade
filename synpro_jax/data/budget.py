"""What of a tokenized corpus a run trains on: held-out validation documents and the data-bound token budget."""

from __future__ import annotations

import numpy as np

from synpro_jax.data.corpus import TokenizedCorpus


def split_validation(corpus: TokenizedCorpus, n_val: int, seed: int) -> tuple[TokenizedCorpus, TokenizedCorpus]:
    """(train, validation): ``n_val`` documents chosen by seed are held out; both keep the corpus order."""
    if n_val >= corpus.num_docs:
        raise ValueError(
            f"DataConfig.validation_docs={n_val} leaves no training documents "
            f"(the organic corpus has {corpus.num_docs})"
        )
    order = np.random.default_rng([seed, 1]).permutation(corpus.num_docs)
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    return corpus.subset(train), corpus.subset(val)


def data_bound_budget(
    corpus: TokenizedCorpus, max_tokens: int, seed: int = 0, order: str = "random"
) -> TokenizedCorpus:
    """Exactly ``max_tokens`` unique tokens: documents in a seeded random order (``order="corpus"``: in the
    corpus's own order) until the budget is met, the last one truncated to fit. The same (corpus, budget, seed,
    order) always selects the same tokens, and a larger budget selects a superset."""
    if max_tokens <= 0:
        raise ValueError(f"unique-token budget {max_tokens}: must be positive")
    if max_tokens > corpus.num_tokens:
        raise ValueError(f"unique-token budget {max_tokens:,} exceeds the corpus's {corpus.num_tokens:,} tokens")
    if order not in ("random", "corpus"):
        raise ValueError(f"budget order {order!r}: 'random' or 'corpus'")
    order = (
        np.random.default_rng(seed).permutation(corpus.num_docs) if order == "random" else np.arange(corpus.num_docs)
    )
    cum = np.cumsum(corpus.lengths()[order])
    n = int(np.searchsorted(cum, max_tokens)) + 1  # documents needed to reach the budget
    used_before = int(cum[n - 2]) if n > 1 else 0
    return corpus.subset(order[:n], last_len=max_tokens - used_before)
