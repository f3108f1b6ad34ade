"""``similarity_local``: BERTScore-style F1 between answer and source from our own LM's contextual embeddings,
thresholded as the release thresholds BERTScore (1 if F1 > 0.65).

BERTScore (no idf weighting, no baseline rescaling, as the release calls it): with unit-norm token embeddings,
precision is the mean over the answer's tokens of the best cosine with any source token, recall the mean over the
source's tokens of the best cosine with any answer token, F1 their harmonic mean. The embeddings here are the
final hidden states (after the final norm) of a ``synpro_jax.models`` decoder, not DeBERTa-large-MNLI's layer 40,
so F1 values sit on another scale: calibrate ``threshold`` for the model used (``LMEmbedder`` + ``f1`` give the
raw values). An empty answer has F1 0, as BERTScore gives an empty candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from synpro_jax import models, sharding
from synpro_jax.models import ModelConfig
from synpro_jax.rl.rewards.base import RewardError, RewardInputs, register_reward
from synpro_jax.rl.rewards.common import answers, as_scores, group_sources

Embedder = Callable[[list[str]], list[np.ndarray]]  # texts -> one [tokens, D] array per text


def greedy_f1(cand: np.ndarray, ref: np.ndarray) -> float:
    """BERTScore F1 of candidate token embeddings [m, D] against reference ones [n, D]; 0 when either is empty."""
    cand, ref = np.asarray(cand, np.float64), np.asarray(ref, np.float64)
    if len(cand) == 0 or len(ref) == 0:
        return 0.0
    cand = cand / np.maximum(np.linalg.norm(cand, axis=-1, keepdims=True), 1e-12)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=-1, keepdims=True), 1e-12)
    sim = cand @ ref.T
    p, r = sim.max(axis=1).mean(), sim.max(axis=0).mean()
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


@functools.lru_cache(maxsize=8)
def _compiled_hidden(cfg: ModelConfig, mesh, rules):
    def fn(params, tokens):
        with sharding.use_rules(rules):
            return models.forward(cfg, params, tokens, return_hidden=True).astype(np.float32)

    return jax.jit(
        fn,
        in_shardings=(models.param_shardings(cfg, mesh, rules), sharding.batch_sharding(mesh, rules)),
        out_shardings=sharding.batch_sharding(mesh, rules, ndim=3),
    )


def final_hidden_states(
    cfg: ModelConfig, params: Any, tokens: np.ndarray, mesh=None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> np.ndarray:
    """The decoder's final hidden states (after the final norm) [B, T, D] float32 for int tokens [B, T], sharded
    over ``mesh`` (default: one device) and brought to every host."""
    mesh = mesh or sharding.single_device_mesh()
    tokens = jax.device_put(np.asarray(tokens, np.int32), sharding.batch_sharding(mesh, rules))
    with jax.set_mesh(mesh):
        out = _compiled_hidden(cfg, mesh, rules)(params, tokens)
    if out.is_fully_addressable:
        return np.asarray(out)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))


class LMEmbedder:
    """texts -> per-token contextual embeddings from a decoder: each text encoded by ``encode`` (a batch encoder),
    cut to ``max_len`` tokens, run ``batch_size`` rows at a time (a multiple of the mesh's data shards) in blocks
    padded at the end to a power-of-two length (few shapes to compile; causal attention keeps the padding out of
    the real tokens). ``bos_id``, if given, is put first as context and left out of the embeddings."""

    def __init__(
        self,
        cfg: ModelConfig,
        params: Any,
        encode: Callable[[list[str]], Sequence[Sequence[int]]],
        *,
        mesh=None,
        max_len: int = 512,
        batch_size: int = 8,
        bos_id: int | None = None,
        pad_id: int = 0,
    ):
        if max_len < 1 or batch_size < 1:
            raise ValueError(f"LMEmbedder max_len={max_len}, batch_size={batch_size}: both must be >= 1")
        self.cfg, self.encode, self.max_len, self.batch_size = cfg, encode, max_len, batch_size
        self.bos_id, self.pad_id = bos_id, pad_id
        self.mesh = mesh or sharding.single_device_mesh()
        ways = sharding.batch_shards(self.mesh)
        if batch_size % ways:
            raise ValueError(
                f"LMEmbedder batch_size={batch_size} does not divide over the mesh's {ways} data "
                "shards; make it a multiple"
            )
        self.params = jax.device_put(params, models.param_shardings(cfg, self.mesh))

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.encode(list(texts))
        if len(ids) != len(texts):
            raise RewardError(f"the encoder returned {len(ids)} token lists for {len(texts)} texts")
        lead = [] if self.bos_id is None else [self.bos_id]
        docs = [lead + list(d)[: self.max_len] for d in ids]
        out: list[np.ndarray] = []
        for start in range(0, len(docs), self.batch_size):
            chunk = docs[start : start + self.batch_size]
            width = max(16, 1 << (max(len(d) for d in chunk) - 1).bit_length())
            tokens = np.full((self.batch_size, width), self.pad_id, np.int32)
            for i, d in enumerate(chunk):
                tokens[i, : len(d)] = d
            hidden = final_hidden_states(self.cfg, self.params, tokens, self.mesh)
            out += [hidden[i, len(lead) : len(d)] for i, d in enumerate(chunk)]
        return out


@register_reward("similarity_local")
class SimilarityLocalReward:
    """1 if BERTScore-style F1(answer, source) > ``threshold`` (the release's 0.65), else 0."""

    name = "similarity_local"

    def __init__(self, embedder: Embedder | None = None, threshold: float = 0.65):
        if embedder is None:
            raise ValueError(
                "similarity_local needs an embedder (texts -> [tokens, D] arrays), e.g. "
                "rl.rewards.similarity.LMEmbedder(cfg, params, encode)"
            )
        self.embedder, self.threshold = embedder, float(threshold)

    def _embed(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        try:
            out = list(self.embedder(texts))
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"similarity_local embedder failed: {type(e).__name__}: {e}") from e
        if len(out) != len(texts) or any(np.ndim(e) != 2 for e in out):
            raise RewardError(
                f"similarity_local embedder returned {len(out)} arrays (need {len(texts)} of [tokens, D])"
            )
        return out

    def f1(self, inputs: RewardInputs) -> np.ndarray:
        """The raw F1 of every completion's answer against its source."""
        texts = answers(inputs)
        _, sources, where = group_sources(inputs)
        src = self._embed(sources)
        for s, e in zip(sources, src):
            if len(e) == 0:
                raise RewardError(f"similarity_local: a source embeds to no tokens: {s[:60]!r}")
        keep = [i for i, a in enumerate(texts) if a]
        emb = dict(zip(keep, self._embed([texts[i] for i in keep])))
        f1 = [greedy_f1(emb[i], src[where[i]]) if i in emb else 0.0 for i in range(len(texts))]
        return as_scores(f1, len(texts), "similarity_local F1")

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        return (self.f1(inputs) > self.threshold).astype(np.float32)
