"""The built-in Markov corpus: its entropy numbers against counts from samples."""

import numpy as np

from synpro_jax.data import MarkovCorpus


def test_entropy_rate_matches_empirical_cross_entropy():
    corpus = MarkovCorpus(vocab_size=16, concentration=0.3, seed=1)
    rows = corpus.sample(256, 200, np.random.default_rng(0))
    prev, nxt = rows[:, :-1].ravel(), rows[:, 1:].ravel()
    empirical = -np.mean(np.log(corpus.transition[prev, nxt]))
    assert abs(empirical - corpus.entropy_rate) < 0.03
    counts = np.bincount(rows.ravel(), minlength=16) / rows.size
    np.testing.assert_allclose(counts, corpus.stationary, atol=0.01)
    assert corpus.entropy_rate < corpus.unigram_entropy <= np.log(16)


def test_sampling_is_seeded():
    corpus = MarkovCorpus(vocab_size=32)
    a = corpus.sample(4, 10, np.random.default_rng(5))
    b = corpus.sample(4, 10, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int32 and a.max() < 32
