"""Data influence: which documents move the current model toward the reference task."""

from synpro_jax.influence.kernel import METHODS, MODES, example_losses, grad_dot, influence_scores, tree_sub

__all__ = ["METHODS", "MODES", "example_losses", "grad_dot", "influence_scores", "tree_sub"]
