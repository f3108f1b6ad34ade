"""Helpers every reward family shares: the answer text after the heading, and one source per prompt group."""

from __future__ import annotations

import numpy as np

from synpro_jax.generation.prompts import parse_answer
from synpro_jax.rl.rewards.base import RewardError, RewardInputs


def check_texts(inputs: RewardInputs) -> None:
    """A completion or source that is not a string (a failed decode upstream) cannot be scored: RewardError."""
    for what, texts in (("completion", inputs.completions), ("source", inputs.sources)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise RewardError(f"{what} {i} is a {type(t).__name__}, not text")


def answers(inputs: RewardInputs) -> list[str]:
    """What follows the operation's heading in each completion (stripped); empty without a heading, as the
    release extracts it."""
    check_texts(inputs)
    return [parse_answer(c, inputs.operation).text for c in inputs.completions]


def group_sources(inputs: RewardInputs) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(unique group ids, the source of each, index into them for every completion), so a per-source score is
    computed once per prompt rather than once per completion. A group whose rows carry different sources is a
    caller bug: ValueError."""
    check_texts(inputs)
    group = np.asarray(inputs.group)
    ids, first, where = np.unique(group, return_index=True, return_inverse=True)
    sources = [inputs.sources[i] for i in first]
    for i, g in enumerate(where):
        if inputs.sources[i] != sources[g]:
            raise ValueError(f"RewardInputs: completion {i} has another source than the rest of group {ids[g]}")
    return ids, sources, where.reshape(-1)


def as_scores(values, n: int, what: str) -> np.ndarray:
    """``values`` as a finite [n] float64 array, or RewardError naming ``what`` produced it."""
    try:
        arr = np.asarray(values, np.float64)
    except (TypeError, ValueError) as e:
        raise RewardError(f"{what} returned something that is not numbers: {e}") from e
    if arr.shape != (n,):
        raise RewardError(f"{what} returned shape {arr.shape} for {n} texts")
    if not np.all(np.isfinite(arr)):
        raise RewardError(f"{what} returned non-finite values at {np.flatnonzero(~np.isfinite(arr))[:5].tolist()}")
    return arr


def call_scorer(fn, texts: list[str], what: str) -> np.ndarray:
    """Run a model-backed scorer; any failure becomes a RewardError naming ``what`` (the suite then applies the
    configured fallback and counts it, or fails the step)."""
    if not texts:
        return np.zeros(0, np.float64)
    try:
        out = fn(texts)
    except RewardError:
        raise
    except Exception as e:
        raise RewardError(f"{what} failed: {type(e).__name__}: {e}") from e
    return as_scores(out, len(texts), what)
