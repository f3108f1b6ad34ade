"""Log-likelihood scoring on the mesh: zero-shot multiple choice (``acc``, ``acc_norm``) and perplexity.

:class:`LoglikelihoodScorer` sums log p(continuation | context) for many (context ids, continuation ids)
requests. Requests are sorted by length and bucketed: a row holds [pad.. context | continuation] right-aligned in
L slots, its continuation inside the last C slots (L and C powers of two), and rows of one (L, C) bucket go
through one jitted forward ``rows`` at a time, batch-sharded over the mesh's data axes. Only the C slots that can
hold continuation tokens go through the output head (:func:`synpro_jax.rl.learner.token_logprobs`). A context
longer than the model's window loses its oldest tokens.

Multiple choice follows lm-evaluation-harness: each choice is scored as the continuation of the context
(:func:`synpro_jax.eval.tasks.continuation`; context and continuation are tokenized separately, an empty context
becomes the EOS token); ``acc`` takes the choice with the largest summed log-likelihood, ``acc_norm`` the largest
log-likelihood per character of the choice.

Perplexity scores held-out documents token by token: each document (EOS first, as a document boundary) is cut
into windows of half the model's context, each conditioned on the document's preceding tokens (as many as fit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
from tqdm.auto import tqdm

from synpro_jax import heartbeat, models, sharding
from synpro_jax.eval.tasks import MCItem, continuation
from synpro_jax.generation.sampler import bucket
from synpro_jax.models import ModelConfig
from synpro_jax.rl.learner import token_logprobs

__all__ = ["LoglikelihoodScorer", "multiple_choice", "perplexity", "score_multiple_choice"]

MIN_CONTINUATION = 4
MIN_LENGTH = 16

Request = tuple[Sequence[int], Sequence[int]]


class LoglikelihoodScorer:
    """log p(continuation | context) summed over the continuation's tokens, for batches of requests."""

    def __init__(
        self,
        cfg: ModelConfig,
        params: Any,
        mesh: Mesh | None = None,
        *,
        rows: int = 32,
        max_len: int | None = None,
        logits_chunk: int = 64,
        rules: sharding.Rules = sharding.DEFAULT_RULES,
    ):
        self.cfg, self.mesh, self.rules = cfg, mesh or sharding.single_device_mesh(), rules
        self.max_len = int(max_len or cfg.max_seq_len)
        if self.max_len < 2:
            raise ValueError(f"LoglikelihoodScorer.max_len={self.max_len}: need at least 2 slots")
        self.rows = bucket(rows, 1, sharding.batch_shards(self.mesh, rules))
        self.params = jax.device_put(params, models.param_shardings(cfg, self.mesh, rules))
        batch = sharding.batch_sharding(self.mesh, rules, ndim=1)
        self._batch = batch

        def fn(params, tokens, positions, segments, mask):
            with sharding.use_rules(rules):
                c = mask.shape[1]
                chunk = logits_chunk if c > logits_chunk and c % logits_chunk == 0 else None
                logp = token_logprobs(cfg, params, tokens, positions, segments, mask, 1.0, chunk)
                return jnp.sum(logp.astype(jnp.float32), axis=-1)

        self._fn = jax.jit(
            fn, in_shardings=(models.param_shardings(cfg, self.mesh, rules),) + (batch,) * 4, out_shardings=batch
        )

    def set_params(self, params: Any) -> None:
        """Score with other parameters of the same model, reusing the compiled programs."""
        self.params = jax.device_put(params, models.param_shardings(self.cfg, self.mesh, self.rules))

    def layout(self, request: Request) -> tuple[list[int], list[int], int, int]:
        """(context ids as kept, continuation ids, L, C) of one request."""
        context, cont = list(request[0]), list(request[1])
        if not cont:
            raise ValueError("a continuation must have at least one token")
        if not context:
            raise ValueError("a context must have at least one token (use the EOS token for none)")
        if len(cont) >= self.max_len:
            raise ValueError(
                f"a continuation of {len(cont)} tokens does not fit the model's {self.max_len} slots "
                "with at least one token of context"
            )
        context = context[-(self.max_len - len(cont)) :]
        c = bucket(len(cont), MIN_CONTINUATION)
        length = min(bucket(max(len(context) + len(cont), c + 1), MIN_LENGTH), self.max_len)
        if length <= c:  # the window caps L: keep one slot before the continuation's
            c = length - 1
        return context, cont, length, c

    def __call__(self, requests: Sequence[Request], *, progress: bool = False, desc: str = "score") -> np.ndarray:
        """Summed log-likelihoods [len(requests)] (float64), in request order."""
        laid = [self.layout(r) for r in requests]
        out = np.zeros(len(laid), np.float64)
        order = sorted(range(len(laid)), key=lambda i: (laid[i][2], laid[i][3], len(laid[i][0]) + len(laid[i][1])))
        batches = []
        for i in order:
            key = laid[i][2:]
            if batches and batches[-1][0] == key and len(batches[-1][1]) < self.rows:
                batches[-1][1].append(i)
            else:
                batches.append((key, [i]))
        bar = tqdm(total=len(laid), desc=desc, unit="req", disable=not progress, dynamic_ncols=True)
        with jax.set_mesh(self.mesh):
            for (length, c), members in batches:
                arrays = self._rows([laid[i] for i in members], length, c)
                placed = [jax.device_put(a, self._batch) for a in arrays]
                sums = sharding.to_host(self._fn(self.params, *placed))
                out[members] = sums[: len(members)]
                heartbeat.beat()
                bar.update(len(members))
        bar.close()
        return out

    def _rows(self, laid, length: int, c: int) -> tuple[np.ndarray, ...]:
        tokens = np.zeros((self.rows, length), np.int32)
        positions = np.zeros((self.rows, length), np.int32)
        segments = np.zeros((self.rows, length), np.int32)
        mask = np.zeros((self.rows, c), bool)
        for r, (context, cont, _, _) in enumerate(laid):
            ids = context + cont
            tokens[r, length - len(ids) :] = ids
            positions[r, length - len(ids) :] = np.arange(len(ids))
            segments[r, length - len(ids) :] = 1
            mask[r, c - len(cont) :] = True
        return tokens, positions, segments, mask


def _encode(vocab, text: str) -> list[int]:
    return [int(t) for t in vocab.encode(text)]


def multiple_choice(items: Sequence[MCItem], loglikelihoods: Sequence[float]) -> dict:
    """``acc`` and ``acc_norm`` (mean over items) from each choice's summed log-likelihood, flattened in item
    order then choice order. acc_norm divides by the choice's length in characters (lm-evaluation-harness)."""
    ll = np.asarray(loglikelihoods, np.float64)
    want = sum(len(it.choices) for it in items)
    if ll.shape != (want,):
        raise ValueError(f"{ll.shape[0] if ll.ndim == 1 else ll.shape} log-likelihoods for {want} choices")
    correct = correct_norm = 0
    start = 0
    for it in items:
        scores = ll[start : start + len(it.choices)]
        start += len(it.choices)
        chars = np.array([max(len(choice), 1) for choice in it.choices], np.float64)
        correct += int(np.argmax(scores)) == it.label
        correct_norm += int(np.argmax(scores / chars)) == it.label
    n = len(items)
    return {
        "acc": correct / n,
        "acc_norm": correct_norm / n,
        "items": n,
        "acc_stderr": math.sqrt(max(correct / n * (1 - correct / n), 0.0) / max(n - 1, 1)),
        "acc_norm_stderr": math.sqrt(max(correct_norm / n * (1 - correct_norm / n), 0.0) / max(n - 1, 1)),
    }


def mc_requests(items: Sequence[MCItem], vocab, eos_id: int) -> list[Request]:
    """One (context ids, continuation ids) request per choice, in item order then choice order."""
    requests = []
    cache: dict[str, list[int]] = {}
    for it in items:
        if it.context not in cache:
            cache[it.context] = _encode(vocab, it.context) or [eos_id]
        for choice in it.choices:
            cont = _encode(vocab, continuation(it.context, choice))
            if not cont:
                raise ValueError(f"choice {choice!r} tokenizes to nothing")
            requests.append((cache[it.context], cont))
    return requests


def score_multiple_choice(
    scorer: Callable, items: Sequence[MCItem], vocab, eos_id: int, *, progress: bool = False, desc: str = "choices"
) -> dict:
    """:func:`multiple_choice` of ``items`` scored by ``scorer`` (a :class:`LoglikelihoodScorer`)."""
    ll = scorer(mc_requests(items, vocab, eos_id), progress=progress, desc=desc)
    return multiple_choice(items, ll)


def perplexity(
    scorer: LoglikelihoodScorer, texts: Sequence[str], vocab, eos_id: int, *, progress: bool = False
) -> dict:
    """Token perplexity, mean NLL per token and bits per byte of held-out documents (see the module docstring)."""
    window = max(1, scorer.max_len // 2)
    requests, n_tokens, n_bytes = [], 0, 0
    for text in texts:
        ids = _encode(vocab, text)
        if not ids:
            continue
        n_tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
        doc = [eos_id] + ids
        for start in range(1, len(doc), window):
            requests.append((doc[:start], doc[start : start + window]))
    if not requests:
        raise ValueError("perplexity: no text to score (every document is empty)")
    total = float(np.sum(scorer(requests, progress=progress, desc="perplexity")))
    nll = -total / n_tokens
    return {
        "ppl": math.exp(min(nll, 700.0)),
        "nll": nll,
        "bits_per_byte": -total / math.log(2) / n_bytes,
        "tokens": n_tokens,
        "documents": len(texts),
    }
