"""The in-graph sampler: one prefill over left-padded prompts, then a ``lax.while_loop`` decode over a KV cache.

Layout of one call (B rows, P prompt slots, N new-token slots, all bucketed to powers of two):

    slot:     0 ........ P-1 | P ............ P+N-1
    row i:    pad.. prompt_i | completion_i

Prompts are left-padded so every row's next token goes into the same slot; padded slots have segment id 0 and
are never attended by real tokens, and RoPE positions count from each row's first real token (as HF does from
the attention mask). The prefill jit fills the cache, the decode jit takes the cache donated and writes one token
per loop step in place, stopping when every row has hit EOS or its budget. Sampling knobs (temperature, top-k,
top-p), the seed and the budgets are traced values, so only a new (B, P, N) bucket compiles.

Each row draws from its own PRNG stream, ``fold_in(fold_in(key(seed), stream_id), step)``, where stream_id
defaults to the prompt's index in the call: a prompt's sample does not depend on the padding or batch around it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from synpro_jax import models, sharding
from synpro_jax.generation.sampling import choose_tokens
from synpro_jax.models import ModelConfig

Params = Any

# How many times each jitted piece was traced (a trace precedes every compile); tests pin "no recompile".
TRACE_COUNTS: collections.Counter = collections.Counter()

MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 16


def bucket(n: int, minimum: int = 1, multiple: int = 1) -> int:
    """The next power of two >= max(n, minimum), rounded up to a multiple of ``multiple``."""
    size = 1 << (max(int(n), int(minimum), 1) - 1).bit_length()
    return -(-size // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Completions of one ``sample`` call, one row per prompt, in prompt order.

    tokens [N, max_new_tokens] int32 holds each completion (a final EOS included) then ``pad_id``; logprobs has
    the log-prob of each generated token under softmax(logits / T) (T = 1 when greedy) and 0 after the end.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    finished: np.ndarray  # True where the completion ended with EOS (False: it used up its budget)

    def completions(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]

    def mask(self) -> np.ndarray:
        """[N, max_new_tokens] bool: True on generated tokens."""
        return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]


def _batch_shards(mesh: Mesh, rules: sharding.Rules) -> int:
    axes = dict(rules).get("batch")
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def _is_names(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(n, str) for n in x)


def _prefill(cfg: ModelConfig, cache_dtype: str, params, tokens, segments, positions, slots: int):
    TRACE_COUNTS["prefill"] += 1
    b, p = tokens.shape
    all_segments = jnp.concatenate([segments, jnp.ones((b, slots - p), jnp.int32)], axis=1)
    cache = models.init_cache(cfg, all_segments, jnp.dtype(cache_dtype))
    cache = jax.tree.map(sharding.constrain, cache, models.KVCache.logical_axes(cfg.num_layers), is_leaf=_is_names)
    return models.forward_cached(cfg, params, tokens, cache, 0, positions=positions, segment_ids=segments,
                                 attend_slots=p)  # the prompt only: the decode slots are still empty


def _decode(cfg: ModelConfig, params, cache, logits, prompt_lengths, budgets, stream_ids, seed, temperature,
            top_k, top_p, eos_ids, pad_id, new_slots: int):
    TRACE_COUNTS["decode"] += 1
    b = logits.shape[0]
    prompt_slots = cache.segments.shape[1] - new_slots
    base = jax.random.key(seed)
    streams = jax.vmap(lambda i: jax.random.fold_in(base, i))(stream_ids)

    def cond(state):
        t, done = state[0], state[5]
        return (t < new_slots) & ~jnp.all(done)

    def body(state):
        t, cache, logits, tokens, logprobs, done, lengths, finished = state
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(streams, t)
        tok, lp = choose_tokens(logits, keys, temperature, top_k, top_p)
        active = ~done
        tok = jnp.where(active, tok, pad_id)
        lp = jnp.where(active, lp, 0.0)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, t))
        logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, None], (0, t))
        lengths = lengths + active.astype(jnp.int32)
        hit_eos = active & jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)
        finished = finished | hit_eos
        done = done | hit_eos | (lengths >= budgets)
        positions = (prompt_lengths + t)[:, None]
        logits, cache = models.forward_cached(cfg, params, tok[:, None], cache, prompt_slots + t,
                                              positions=positions, segment_ids=jnp.ones((b, 1), jnp.int32))
        return t + 1, cache, logits, tokens, logprobs, done, lengths, finished

    state = (
        jnp.zeros((), jnp.int32), cache, logits,
        jnp.full((b, new_slots), pad_id, jnp.int32), jnp.zeros((b, new_slots), jnp.float32),
        budgets <= 0, jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool),
    )
    _, cache, _, tokens, logprobs, _, lengths, finished = jax.lax.while_loop(cond, body, state)
    # The cache goes back out so the donated input buffer is the loop's in-place storage.
    return tokens, logprobs, lengths, finished, cache


class Sampler:
    """A model's weights placed for sampling on a mesh, and the jitted prefill/decode pair.

    Matmul weights are cast once to the compute dtype (bf16 decode reads half the bytes per step) and laid out
    by ``rules``: SAMPLING_RULES keeps whole weights on each data-parallel group, so the loop needs no fsdp
    gathers. The KV cache is kept in ``cache_dtype`` (default: the compute dtype; float32 on CPU, where bf16
    decode attention is slow). Reuse one Sampler for many calls; a new one with the same settings reuses the
    compiles.
    """

    def __init__(self, cfg: ModelConfig, params: Params, *, mesh: Mesh | None = None,
                 rules: sharding.Rules = sharding.SAMPLING_RULES, cache_dtype: str | None = None):
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else sharding.single_device_mesh()
        self.rules = rules
        shardings = _split_shardings(models.param_shardings(cfg, self.mesh, rules), cfg.num_layers)
        dtype = cfg.compute_dtype

        def place(p):
            p = models.split_layers(p)
            return jax.tree.map(lambda x: x.astype(dtype) if x.ndim >= 2 else x.astype(jnp.float32), p)

        self.params = jax.jit(place, out_shardings=shardings)(params)
        if cache_dtype is None:  # XLA:CPU runs bf16 batched mat-vecs (decode attention) ~8x slower than fp32
            cpu = self.mesh.devices.flat[0].platform == "cpu"
            cache_dtype = "float32" if cpu else cfg.dtype
        self.cache_dtype = cache_dtype
        self._prefill, self._decode = _compiled(cfg, self.mesh, rules, cache_dtype)
        self.batch_shards = _batch_shards(self.mesh, rules)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | Sequence[int],
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        eos_id: int | Sequence[int] | None = None,
        pad_id: int = 0,
        stream_ids: Sequence[int] | None = None,
    ) -> SampleOutput:
        """Complete every prompt in one bucketed call; see :func:`sample`."""
        cfg, n = self.cfg, len(prompts)
        if n == 0:
            raise ValueError("sample: prompts is empty")
        budgets = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (n,))
        _check_knobs(cfg, prompts, budgets, temperature, top_k, top_p, pad_id)
        eos = [] if eos_id is None else [eos_id] if np.isscalar(eos_id) else list(eos_id)
        streams = np.arange(n) if stream_ids is None else np.asarray(stream_ids)
        if streams.shape != (n,):
            raise ValueError(f"sample: stream_ids has shape {streams.shape}, expected ({n},)")

        lengths = np.array([len(p) for p in prompts])
        rows = bucket(n, 1, self.batch_shards)
        p_slots = bucket(lengths.max(), MIN_PROMPT_BUCKET)
        n_slots = bucket(budgets.max(), MIN_NEW_BUCKET)
        tokens = np.full((rows, p_slots), pad_id, np.int32)
        segments = np.zeros((rows, p_slots), np.int32)
        for i, prompt in enumerate(prompts):
            tokens[i, p_slots - len(prompt):] = prompt
            segments[i, p_slots - len(prompt):] = 1
        pad = np.concatenate([p_slots - lengths, np.full(rows - n, p_slots)])
        positions = np.maximum(np.arange(p_slots)[None, :] - pad[:, None], 0).astype(np.int32)
        row_lengths = np.concatenate([lengths, np.zeros(rows - n, np.int64)]).astype(np.int32)
        row_budgets = np.concatenate([budgets, np.zeros(rows - n, np.int64)]).astype(np.int32)
        row_streams = np.concatenate([streams, np.zeros(rows - n, np.int64)]).astype(np.int32)

        with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
            logits, cache = self._prefill(self.params, tokens, segments, positions, p_slots + n_slots)
            out = self._decode(
                self.params, cache, logits, row_lengths, row_budgets, row_streams,
                np.uint32(seed % 2**32), np.float32(temperature), np.int32(top_k or 0),
                np.float32(1.0 if top_p is None else top_p), _eos_array(eos), np.int32(pad_id), n_slots,
            )
        out_tokens, logprobs, out_lengths, finished = (np.asarray(x)[:n] for x in out[:4])
        width = int(budgets.max())
        return SampleOutput(out_tokens[:, :width], out_lengths, logprobs[:, :width], finished)


def _eos_array(eos: list[int]) -> np.ndarray:
    """EOS ids padded with -1 (never a token) to a multiple of 8, so a few more stop ids do not recompile."""
    out = np.full(-(-max(len(eos), 1) // 8) * 8, -1, np.int32)
    out[:len(eos)] = eos
    return out


def _split_shardings(stacked, num_layers: int):
    """Shardings of split_layers(params): each layer's leaves drop the leading (replicated) layers axis."""
    def drop_layer_axis(s: NamedSharding) -> NamedSharding:
        return NamedSharding(s.mesh, jax.sharding.PartitionSpec(*tuple(s.spec)[1:]))

    per_layer = jax.tree.map(drop_layer_axis, stacked["layers"])
    return {**stacked, "layers": [per_layer] * num_layers}


def _check_knobs(cfg, prompts, budgets, temperature, top_k, top_p, pad_id) -> None:
    if budgets.min() < 1:
        raise ValueError(f"sample: max_new_tokens must be >= 1 (got {budgets.min()})")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"sample: prompt {i} is empty; every prompt needs at least one token")
        lo, hi = min(prompt), max(prompt)
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"sample: prompt {i} has token id {lo if lo < 0 else hi} outside the vocabulary "
                             f"[0, {cfg.vocab_size})")
        if len(prompt) + budgets[i] > cfg.max_seq_len:
            raise ValueError(f"sample: prompt {i} has {len(prompt)} tokens; with max_new_tokens={budgets[i]} it "
                             f"exceeds ModelConfig.max_seq_len={cfg.max_seq_len} (cut the prompt or the budget)")
    if temperature < 0 or not np.isfinite(temperature):
        raise ValueError(f"sample: temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"sample: top_k={top_k} must be >= 1, or None for no top-k")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"sample: top_p={top_p} must be in (0, 1], or None for no top-p")
    if not 0 <= pad_id < cfg.vocab_size:
        raise ValueError(f"sample: pad_id={pad_id} is outside the vocabulary [0, {cfg.vocab_size})")


@functools.lru_cache(maxsize=16)
def _compiled(cfg: ModelConfig, mesh: Mesh, rules: sharding.Rules, cache_dtype: str):
    """The jitted prefill and decode for one (config, mesh, rules), with explicit shardings."""
    params = _split_shardings(models.param_shardings(cfg, mesh, rules), cfg.num_layers)
    rows = NamedSharding(mesh, sharding.logical_to_spec(("batch",), rules))
    rows2 = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length"), rules))
    cache = jax.tree.map(lambda names: NamedSharding(mesh, sharding.logical_to_spec(names, rules)),
                         models.KVCache.logical_axes(cfg.num_layers), is_leaf=_is_names)
    logits = NamedSharding(mesh, sharding.logical_to_spec(("batch", "vocab"), rules))
    scalar = sharding.replicated(mesh)
    prefill = jax.jit(
        functools.partial(_prefill, cfg, cache_dtype), static_argnums=(4,),
        in_shardings=(params, rows2, rows2, rows2), out_shardings=(logits, cache),
    )
    decode = jax.jit(
        functools.partial(_decode, cfg), static_argnums=(12,),
        in_shardings=(params, cache, logits, rows, rows, rows, scalar, scalar, scalar, scalar, scalar, scalar),
        out_shardings=(rows2, rows2, rows, rows, cache),
        donate_argnums=(1,),
    )
    return prefill, decode


def sample(
    cfg: ModelConfig,
    params: Params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int],
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.SAMPLING_RULES,
    stream_ids: Sequence[int] | None = None,
) -> SampleOutput:
    """Complete token-id prompts with the model.

    temperature 0 is greedy; otherwise tokens are drawn from softmax(logits / T) restricted to the top_k
    most likely tokens and then to the smallest set holding top_p of the mass. ``max_new_tokens`` is one budget
    or one per prompt; a row stops at its budget or right after emitting an ``eos_id`` (one id or several).
    Prompts of any lengths share one call; (batch, prompt, budget) sizes are bucketed to powers of two.
    For repeated calls with the same weights build a :class:`Sampler` once (this casts and places the weights).
    """
    return Sampler(cfg, params, mesh=mesh, rules=rules).generate(
        prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        eos_id=eos_id, pad_id=pad_id, stream_ids=stream_ids,
    )
