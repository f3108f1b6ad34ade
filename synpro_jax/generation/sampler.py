"""The in-graph sampler: one prefill over left-padded prompts, then a ``lax.while_loop`` decode over a KV cache.

Layout of one call (B rows, P prompt slots, N new-token slots, all bucketed to powers of two):

    slot:     0 ........ P-1 | P ............ P+N-1
    row i:    pad.. prompt_i | completion_i

Prompts are left-padded so every row's next token goes into the same slot; padded slots have segment id 0 and
are never attended by real tokens, and RoPE positions count from each row's first real token (as HF does from
the attention mask). The prefill jit fills the prompts' cache; the decode jit reads it as a shared prefix and
writes one token per loop step in place into the completions' own cache, stopping when every row has hit EOS or
its budget. Sampling knobs (temperature, top-k, top-p), the seed and the budgets are traced values, so only a new
(B, P, N) bucket compiles.

Each row draws from its own PRNG stream, ``fold_in(fold_in(key(seed), stream_id), step)``, where stream_id
defaults to the row's index in the call: a prompt's sample does not depend on the padding or batch around it.

For GRPO-style groups (``num_generations=G``) each prompt is prefilled once; its logits are repeated to its G
rows, and its cache is not: the G rows attend to the one copy (a shared prefix in
:func:`synpro_jax.models.olmo.dot_product_attention`), so a step reads the prompt's keys and values once per
group, not G times. Row i*G+g draws from stream i*G+g, the stream it would have had with the prompt written out
G times.

Decode runs in phases whose completion cache grows with the filled slots (:func:`decode_windows`), so a step
reads the completion so far rounded up to the next window (half-octave ends), not the whole budget. Each phase's
loop carries a cache of exactly its window and attends to all of it: attending to a slice of a bigger cache makes
XLA:CPU copy the whole cache on every step (the update and the slice fuse), while growing it costs one copy per
phase.

:meth:`Sampler.rollout` returns the device-resident [prompt | completion] batch a learner consumes
(:class:`RolloutBatch`); only text rewards need :meth:`RolloutBatch.texts`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
import numpy as np

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


class RolloutBatch(NamedTuple):
    """Rollouts as the learner wants them, device-resident, one row per (prompt, generation) in prompt-major order
    (row i*G+g is generation g of prompt i). P = prompt slots (bucketed), C = the largest max_new_tokens.

    tokens [B, P+C] int32: the left-padded prompt then the completion (``pad_id`` after it ends);
    positions [B, P+C]: RoPE positions counted from each row's first prompt token;
    segment_ids [B, P+C]: 1 on prompt and generated tokens, 0 on padding (a learner passes these to forward);
    completion_mask [B, C] bool: True on generated tokens; logprobs [B, C] float32: the sampler's log-probs
    (under softmax(logits / T)), 0 off the mask; lengths [B], finished [B] (ended with EOS).
    The learner's log-prob of completion token j comes from the logits at slot P - 1 + j.
    """

    tokens: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finished: jax.Array

    @property
    def prompt_slots(self) -> int:
        return self.tokens.shape[1] - self.logprobs.shape[1]

    def completions(self) -> list[list[int]]:
        """Completion token ids per row (a host copy of the completion slots only)."""
        tokens, lengths = sharding.to_host(self.tokens[:, self.prompt_slots :]), sharding.to_host(self.lengths)
        return [row[:n].tolist() for row, n in zip(tokens, lengths)]

    def texts(self, decode: Callable[[list[int]], str]) -> list[str]:
        """Completions as text through ``decode`` (e.g. a tokenizer's decode): only text rewards need this."""
        return [decode(c) for c in self.completions()]


def decode_windows(new_slots: int, prompt_slots: int = 0) -> list[int]:
    """Ends of the decode phases over ``new_slots`` steps: steps [previous end, end) attend the prompt slots plus
    the first ``end`` completion slots. The first phase ends at max(16, prompt_slots / 4) (a power of two); after
    it the ends go by half octaves (2^k, 1.5 * 2^k, 2^(k+1)), so a step reads under 1.5x its filled completion
    slots (under 1.25x its whole context in the first phase) while compiling 2 log2(new_slots / first end) + 1
    loop bodies. Over a whole decode the slots read are 1.07x / 1.13x the live ones (128 prompt + 128 / 1024 new
    tokens) against 1.12x / 1.27x with octaves; a finer grid compiles more and its cache copies (one per phase)
    ate the gain on CPU."""
    first = bucket(max(MIN_NEW_BUCKET, prompt_slots // 4))
    ends = [min(first, new_slots)]
    while ends[-1] < new_slots:
        end = ends[-1]
        ends.append(min(end * 3 // 2 if end & (end - 1) == 0 else end * 4 // 3, new_slots))
    return ends


def _is_names(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(n, str) for n in x)


def _prefill(cfg: ModelConfig, cache_dtype: str, params, tokens, segments, positions, groups: int):
    """The prompts' KV cache (one row per prompt, exactly its slots) and next-token logits, one row per decode
    row: each prompt's logits go to its G rows, while its cache stays single (the decode shares it)."""
    TRACE_COUNTS["prefill"] += 1
    cache = models.init_cache(cfg, segments, jnp.dtype(cache_dtype))
    cache = jax.tree.map(sharding.constrain, cache, models.KVCache.logical_axes(cfg.num_layers), is_leaf=_is_names)
    logits, cache = models.forward_cached(cfg, params, tokens, cache, 0, positions=positions, segment_ids=segments)
    if groups > 1:
        logits = jnp.repeat(logits, groups, axis=0)
    return logits, cache


def _decode(
    cfg: ModelConfig,
    params,
    prompt_cache,
    logits,
    prompt_lengths,
    budgets,
    stream_ids,
    seed,
    temperature,
    top_k,
    top_p,
    eos_ids,
    pad_id,
    new_slots: int,
):
    """Decode rows (G consecutive rows per prompt row of ``prompt_cache``): the prompt's keys and values are a
    shared, read-only prefix, and the completions get their own cache, grown phase by phase."""
    TRACE_COUNTS["decode"] += 1
    b = logits.shape[0]
    prompt_slots = prompt_cache.segments.shape[1]
    groups = b // prompt_cache.segments.shape[0]
    prefix = models.PrefixKV(prompt_cache.k, prompt_cache.v, jnp.repeat(prompt_cache.segments, groups, axis=0), groups)
    cache = models.init_cache(cfg, jnp.ones((b, 0), jnp.int32), prompt_cache.k[0].dtype)
    base = jax.random.key(seed)
    streams = jax.vmap(lambda i: jax.random.fold_in(base, i))(stream_ids)

    def cond(end, state):
        t, done = state[0], state[5]
        return (t < end) & ~jnp.all(done)

    def body(state):
        t, cache, logits, tokens, logprobs, done, lengths, finished = state
        # greedy draws nothing: skip the per-row key derivation (a threefry loop, ~1% of a small model's step)
        keys = jax.lax.cond(
            temperature > 0, lambda: jax.vmap(jax.random.fold_in, in_axes=(0, None))(streams, t), lambda: streams
        )
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
        logits, cache = models.forward_cached(
            cfg,
            params,
            tok[:, None],
            cache,
            t,
            positions=positions,
            segment_ids=jnp.ones((b, 1), jnp.int32),
            prefix=prefix,
        )
        return t + 1, cache, logits, tokens, logprobs, done, lengths, finished

    state = (
        jnp.zeros((), jnp.int32),
        cache,
        logits,
        jnp.full((b, new_slots), pad_id, jnp.int32),
        jnp.zeros((b, new_slots), jnp.float32),
        budgets <= 0,
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), bool),
    )
    # Phase by phase the completion cache grows with the filled slots (step t fills its slot t); a phase
    # whose rows are all done exits at once.
    for end in decode_windows(new_slots, prompt_slots):
        state = (state[0], _grow_cache(cfg, state[1], end)) + state[2:]
        state = jax.lax.while_loop(functools.partial(cond, end), body, state)
    _, _, _, tokens, logprobs, _, lengths, finished = state
    return tokens, logprobs, lengths, finished


def _grow_cache(cfg: ModelConfig, cache: models.KVCache, slots: int) -> models.KVCache:
    """The completion cache grown to ``slots`` slots (the new ones empty: zeros, segment 1)."""
    more = slots - cache.segments.shape[1]
    kv = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, more), (0, 0)))  # noqa: E731
    segments = jnp.pad(cache.segments, ((0, 0), (0, more)), constant_values=1)
    cache = models.KVCache(tuple(map(kv, cache.k)), tuple(map(kv, cache.v)), segments)
    return jax.tree.map(sharding.constrain, cache, models.KVCache.logical_axes(cfg.num_layers), is_leaf=_is_names)


class Sampler:
    """A model's weights placed for sampling on a mesh, and the jitted prefill/decode pair.

    Matmul weights are cast once to the compute dtype (bf16 decode reads half the bytes per step) and laid out
    by ``rules``: SAMPLING_RULES keeps whole weights on each data-parallel group, so the loop needs no fsdp
    gathers. The KV cache is kept in ``cache_dtype`` (default: the compute dtype; float32 on CPU, where a bf16
    cache halves the bytes but XLA:CPU attends over it ~2.5x slower than over float32, so a step of cpu_small
    at batch 32 takes ~1.4x longer; see :func:`synpro_jax.models.attention.dot_product_attention`). A bf16
    cache also rounds keys and values, which moves logits slightly: greedy tokens can part from a float32
    cache's where logits nearly tie (HF parity tests run a float32 cache). Reuse one Sampler for many calls and
    swap weights with :meth:`update_params`; the placement, prefill and decode are compiled once per (config,
    mesh, rules, cache dtype) and take the weights as arguments, so neither a weight swap nor a new Sampler
    with the same settings recompiles.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        params: Params,
        *,
        mesh: Mesh | None = None,
        rules: sharding.Rules = sharding.SAMPLING_RULES,
        cache_dtype: str | None = None,
    ):
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else sharding.single_device_mesh()
        self.rules = rules
        if cache_dtype is None:  # XLA:CPU attends over a bf16 cache ~2.5x slower than over fp32 (per layer)
            cpu = self.mesh.devices.flat[0].platform == "cpu"
            cache_dtype = "float32" if cpu else cfg.dtype
        self.cache_dtype = cache_dtype
        (self._place, self._prefill, self._decode, self._assemble, self._inputs) = programs(
            cfg, self.mesh, rules, cache_dtype
        )
        self.batch_shards = sharding.batch_shards(self.mesh, rules)
        self._shapes = _shapes(params)
        self.params = self._place(params)

    def update_params(self, params: Params) -> None:
        """Swap in new weights (e.g. the learner's after an update) through the already-compiled placement.

        ``params`` must have the tree structure and shapes of the weights the Sampler was built with; they are
        not modified or donated (the learner keeps its copy).
        """
        shapes = _shapes(params)
        if shapes != self._shapes:
            if jax.tree.structure(shapes) != jax.tree.structure(self._shapes):
                raise ValueError(
                    "Sampler.update_params: the new params have a different tree structure than the "
                    f"Sampler's (ModelConfig {self.cfg.name!r})"
                )
            bad = [
                f"{jax.tree_util.keystr(k)}: {a} != {b}"
                for (k, a), b in zip(
                    jax.tree_util.tree_leaves_with_path(shapes, is_leaf=_is_shape),
                    jax.tree.leaves(self._shapes, is_leaf=_is_shape),
                )
                if a != b
            ]
            raise ValueError(f"Sampler.update_params: param shapes differ from the Sampler's: {bad[:3]}")
        self.params = self._place(params)

    def _run(
        self, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id, pad_id, stream_ids, num_generations
    ):
        """Prefill + decode on device. Returns host inputs and device outputs (all rows, padding included)."""
        cfg, n, g = self.cfg, len(prompts), int(num_generations)
        if n == 0:
            raise ValueError("sample: prompts is empty")
        if g < 1:
            raise ValueError(f"sample: num_generations={num_generations} must be >= 1")
        budgets = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (n,))
        _check_knobs(cfg, prompts, budgets, temperature, top_k, top_p, pad_id)
        eos = [] if eos_id is None else [eos_id] if np.isscalar(eos_id) else list(eos_id)
        streams = np.arange(n) if stream_ids is None else np.asarray(stream_ids)
        if streams.shape != (n,):
            raise ValueError(f"sample: stream_ids has shape {streams.shape}, expected ({n},)")

        lengths = np.array([len(p) for p in prompts])
        rows = bucket(n, 1, self.batch_shards)  # prefill rows; decode has rows * g
        p_slots = bucket(lengths.max(), MIN_PROMPT_BUCKET)
        n_slots = bucket(budgets.max(), MIN_NEW_BUCKET)
        tokens = np.full((rows, p_slots), pad_id, np.int32)
        segments = np.zeros((rows, p_slots), np.int32)
        for i, prompt in enumerate(prompts):
            tokens[i, p_slots - len(prompt) :] = prompt
            segments[i, p_slots - len(prompt) :] = 1
        pad = np.concatenate([p_slots - lengths, np.full(rows - n, p_slots)])
        positions = np.maximum(np.arange(p_slots)[None, :] - pad[:, None], 0).astype(np.int32)

        def per_row(x):  # per prompt -> per decode row (row i*g + j), padding rows 0
            return np.repeat(np.concatenate([x, np.zeros(rows - n, np.int64)]), g).astype(np.int32)

        # Row i*g+j draws from stream streams[i]*g+j: with g = 1 the prompt's stream, and with g > 1 the stream
        # that row would have if the prompts were written out g times (stream_ids there: range(n * g)).
        row_streams = per_row(streams) * g + np.tile(np.arange(g, dtype=np.int32), rows)

        # Global arrays from the host values every process holds alike (each places its own shards).
        rows_in, rows2_in, one = self._inputs
        tokens, segments, positions = (sharding.host_to_global(x, rows2_in) for x in (tokens, segments, positions))
        per_row_in = [sharding.host_to_global(x, rows_in) for x in (per_row(lengths), per_row(budgets), row_streams)]
        scalars = [
            sharding.host_to_global(x, one)
            for x in (
                np.uint32(seed % 2**32),
                np.float32(temperature),
                np.int32(top_k or 0),
                np.float32(1.0 if top_p is None else top_p),
                _eos_array(eos),
                np.int32(pad_id),
            )
        ]
        with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
            logits, cache = self._prefill(self.params, tokens, segments, positions, g)
            out = self._decode(self.params, cache, logits, *per_row_in, *scalars, n_slots)
        return (tokens, segments, positions), out, int(budgets.max()), n * g

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
        num_generations: int = 1,
    ) -> SampleOutput:
        """Complete every prompt in one bucketed call (host arrays); see :func:`sample`. With
        ``num_generations=G`` each prompt is prefilled once and completed G times: rows i*G..i*G+G-1."""
        _, out, width, n = self._run(
            prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id, pad_id, stream_ids, num_generations
        )
        out_tokens, logprobs, out_lengths, finished = (sharding.to_host(x)[:n] for x in out)
        return SampleOutput(out_tokens[:, :width], out_lengths, logprobs[:, :width], finished)

    def rollout(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        num_generations: int,
        max_new_tokens: int | Sequence[int],
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        eos_id: int | Sequence[int] | None = None,
        pad_id: int = 0,
        stream_ids: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """G completions per prompt off one shared prefill, as a device-resident :class:`RolloutBatch` of
        len(prompts) * G rows (no device-to-host copy). Knobs as in :func:`sample`."""
        (tokens, segments, positions), out, width, n = self._run(
            prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id, pad_id, stream_ids, num_generations
        )
        with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
            return self._assemble(tokens, segments, positions, *out, int(num_generations), width, n)


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _shapes(params):
    return jax.tree.map(lambda x: tuple(np.shape(x)), params)


def _place(cfg: ModelConfig, params):
    """Cast matmul weights to the compute dtype (vectors stay float32) and split the layers."""
    TRACE_COUNTS["place"] += 1
    p = models.split_layers(params)
    return jax.tree.map(lambda x: x.astype(cfg.compute_dtype) if x.ndim >= 2 else x.astype(jnp.float32), p)


def _assemble(
    prompt_tokens,
    prompt_segments,
    prompt_positions,
    tokens,
    logprobs,
    lengths,
    finished,
    groups: int,
    width: int,
    rows: int,
) -> RolloutBatch:
    """The learner's [prompt | completion] batch from the prompt layout and the decode outputs, on device."""
    TRACE_COUNTS["assemble"] += 1

    def rep(x):
        return jnp.repeat(x, groups, axis=0)[:rows]

    tokens, logprobs = tokens[:rows, :width], logprobs[:rows, :width]
    lengths, finished = lengths[:rows], finished[:rows]
    mask = jnp.arange(width)[None, :] < lengths[:, None]
    segments = rep(prompt_segments)
    prompt_len = jnp.sum(segments, axis=1)
    return RolloutBatch(
        tokens=jnp.concatenate([rep(prompt_tokens), tokens], axis=1),
        positions=jnp.concatenate([rep(prompt_positions), prompt_len[:, None] + jnp.arange(width)[None, :]], 1),
        segment_ids=jnp.concatenate([segments, mask.astype(jnp.int32)], axis=1),
        completion_mask=mask,
        logprobs=logprobs,
        lengths=lengths,
        finished=finished,
    )


def _eos_array(eos: list[int]) -> np.ndarray:
    """EOS ids padded with -1 (never a token) to a multiple of 8, so a few more stop ids do not recompile."""
    out = np.full(-(-max(len(eos), 1) // 8) * 8, -1, np.int32)
    out[: len(eos)] = eos
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
            raise ValueError(
                f"sample: prompt {i} has token id {lo if lo < 0 else hi} outside the vocabulary [0, {cfg.vocab_size})"
            )
        if len(prompt) + budgets[i] > cfg.max_seq_len:
            raise ValueError(
                f"sample: prompt {i} has {len(prompt)} tokens; with max_new_tokens={budgets[i]} it "
                f"exceeds ModelConfig.max_seq_len={cfg.max_seq_len} (cut the prompt or the budget)"
            )
    if temperature < 0 or not np.isfinite(temperature):
        raise ValueError(f"sample: temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"sample: top_k={top_k} must be >= 1, or None for no top-k")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"sample: top_p={top_p} must be in (0, 1], or None for no top-p")
    if not 0 <= pad_id < cfg.vocab_size:
        raise ValueError(f"sample: pad_id={pad_id} is outside the vocabulary [0, {cfg.vocab_size})")


@functools.lru_cache(maxsize=16)
def programs(cfg: ModelConfig, mesh: Mesh, rules: sharding.Rules, cache_dtype: str):
    """The jitted placement, prefill, decode and rollout assembly for one (config, mesh, rules, cache dtype),
    with explicit shardings, and the shardings of the host inputs (rows, rows x length, scalars); weights are
    arguments, so new weights reuse every compile."""
    params = _split_shardings(models.param_shardings(cfg, mesh, rules), cfg.num_layers)
    rows = NamedSharding(mesh, sharding.logical_to_spec(("batch",), rules))
    rows2 = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length"), rules))
    cache = jax.tree.map(
        lambda names: NamedSharding(mesh, sharding.logical_to_spec(names, rules)),
        models.KVCache.logical_axes(cfg.num_layers),
        is_leaf=_is_names,
    )
    logits = NamedSharding(mesh, sharding.logical_to_spec(("batch", "vocab"), rules))
    scalar = sharding.replicated(mesh)
    place = jax.jit(functools.partial(_place, cfg), out_shardings=params)
    prefill = jax.jit(
        functools.partial(_prefill, cfg, cache_dtype),
        static_argnums=(4,),
        in_shardings=(params, rows2, rows2, rows2),
        out_shardings=(logits, cache),
    )
    decode = jax.jit(
        functools.partial(_decode, cfg),
        static_argnums=(12,),
        in_shardings=(params, cache, logits, rows, rows, rows, scalar, scalar, scalar, scalar, scalar, scalar),
        out_shardings=(rows2, rows2, rows, rows),
    )
    assemble = jax.jit(_assemble, static_argnums=(7, 8, 9))
    return place, prefill, decode, assemble, (rows, rows2, scalar)


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
    num_generations: int = 1,
) -> SampleOutput:
    """Complete token-id prompts with the model (``num_generations`` completions each, off one prefill).

    temperature 0 is greedy; otherwise tokens are drawn from softmax(logits / T) restricted to the top_k
    most likely tokens and then to the smallest set holding top_p of the mass. ``max_new_tokens`` is one budget
    or one per prompt; a row stops at its budget or right after emitting an ``eos_id`` (one id or several).
    Prompts of any lengths share one call; (batch, prompt, budget) sizes are bucketed to powers of two.
    For repeated calls with the same weights build a :class:`Sampler` once (this casts and places the weights).
    """
    return Sampler(cfg, params, mesh=mesh, rules=rules).generate(
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_id=eos_id,
        pad_id=pad_id,
        stream_ids=stream_ids,
        num_generations=num_generations,
    )
