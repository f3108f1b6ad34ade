"""Data influence: which documents move the current model toward the reference task."""

from synpro_jax.influence.kernel import MODES, example_losses, per_example_influence, tree_sub

__all__ = ["MODES", "example_losses", "per_example_influence", "tree_sub"]
