"""Data for pretraining: built-in synthetic corpora (more sources arrive with the seqio pipeline)."""

from synpro_jax.data.markov import MarkovCorpus

__all__ = ["MarkovCorpus"]
