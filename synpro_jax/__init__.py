"""synpro_jax: SynPro (generating pretraining tokens from organic data) in JAX/Flax."""

__version__ = "0.1.0"
