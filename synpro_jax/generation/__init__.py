"""Generation: the in-graph sampler, the rephrase/reformat prompts and their parsers, and bulk synthesis."""

from synpro_jax.generation.sampler import RolloutBatch, SampleOutput, Sampler, sample

__all__ = ["sample", "Sampler", "SampleOutput", "RolloutBatch"]
