"""Pretraining data, one module per stage, read in this order:

``sources`` (documents from files, TFDS or the built-in Markov corpus) -> ``vocab`` -> ``corpus`` (tokenized and
cached) -> ``budget`` (held-out validation, data-bound token budget) -> ``packing`` (rows of one stream) ->
``mixture`` (block-deterministic mixtures and their rates) -> ``tasks`` (seqio Tasks and the packed Mixture) ->
``pipeline`` (per-host global batches). ``config`` holds :class:`DataConfig`; ``streams`` runs the stages for a
run.
"""

from synpro_jax.data.markov import MarkovCorpus

__all__ = ["MarkovCorpus"]
