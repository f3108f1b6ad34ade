"""Evaluation: perplexity and the zero-shot multiple-choice harness (``harness``, ``tasks``, ``run``: `synpro eval`)
and the effective-token fit (``effective_tokens``)."""
