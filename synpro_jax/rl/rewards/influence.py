"""``data_influence``: influence(answer) - influence(source), in process.

influence(x) = L_theta(x) - L_theta'(x) (``synpro_jax.influence``; positive: the reference fine-tune made x more
likely), the release's sign. As in the release, an answer (the text after the heading) shorter than
``min_chars`` (500) characters is scored as the source, so its reward is 0; such answers are not scored at all.
Unlike the release, which scores the source again for every completion, each prompt's source is scored once.

The reward takes a ``scorer``: texts -> [len(texts)] influence. :func:`probe_scorer` builds one from a
:class:`~synpro_jax.influence.probe.Probe` (theta and theta' on the mesh, two forwards per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from synpro_jax.rl.rewards.base import RewardError, RewardInputs, register_reward
from synpro_jax.rl.rewards.common import answers, call_scorer, group_sources

Scorer = Callable[[list[str]], np.ndarray]


def probe_scorer(
    probe, encode: Callable[[list[str]], Sequence[Sequence[int]]], batch_size: int, pad_id: int = 0
) -> Scorer:
    """texts -> influence under ``probe`` (each text encoded by ``encode``, a batch encoder such as
    ``data.corpus.encoder_for(vocab)``, cut to the probe's max_len + 1 tokens, scored ``batch_size`` rows at a
    time; batch_size must divide over the mesh's data shards)."""
    if batch_size < 1:
        raise ValueError(f"probe_scorer batch_size={batch_size}: must be >= 1")

    def score(texts: list[str]) -> np.ndarray:
        ids = encode(list(texts))
        if len(ids) != len(texts):
            raise RewardError(f"the encoder returned {len(ids)} token lists for {len(texts)} texts")
        docs = [np.asarray(d, np.int32) for d in ids]
        short = [i for i, d in enumerate(docs) if len(d) < 2]
        if short:  # one token has no next-token target: its loss, and so its influence, is undefined
            raise RewardError(f"text {short[0]} encodes to {len(docs[short[0]])} token(s); influence needs >= 2")
        return probe.score_docs(docs, batch_size, pad_id)["influence"]

    return score


@register_reward("data_influence")
class DataInfluenceReward:
    name = "data_influence"

    def __init__(self, scorer: Scorer | None = None, min_chars: int = 500):
        if scorer is None:
            raise ValueError(
                "data_influence needs a scorer (texts -> influence), e.g. "
                "rl.rewards.influence.probe_scorer(probe, encode, batch_size)"
            )
        if min_chars < 0:
            raise ValueError(f"data_influence min_chars={min_chars}: must be >= 0")
        self.scorer, self.min_chars = scorer, int(min_chars)

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        texts = answers(inputs)
        _, sources, where = group_sources(inputs)
        scored = [i for i, a in enumerate(texts) if len(a) >= self.min_chars]
        # One call: every prompt's source once, then the answers long enough to count.
        values = call_scorer(self.scorer, sources + [texts[i] for i in scored], "data_influence scorer")
        base, own = values[: len(sources)], values[len(sources) :]
        out = np.zeros(len(texts), np.float64)
        out[scored] = own - base[where[scored]]
        return out.astype(np.float32)
