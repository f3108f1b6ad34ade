"""The OLMo-2 (and Qwen3) style decoder: configuration, presets, a functional forward pass, losses and HF interop."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from synpro_jax import sharding
from synpro_jax.models.config import ModelConfig
from synpro_jax.models.losses import LossSums, chunked_loss_sums, loss_sums, per_example_loss, token_nll
from synpro_jax.models.olmo import Decoder, KVCache, PrefixKV, decode, layer_params, output_head, unembed
from synpro_jax.models.presets import PRESETS, describe_presets, get_preset

Params = Any

__all__ = [
    "ModelConfig",
    "PRESETS",
    "get_preset",
    "describe_presets",
    "Decoder",
    "forward",
    "init_params",
    "random_params",
    "abstract_params",
    "param_logical_axes",
    "param_shardings",
    "LossSums",
    "loss_sums",
    "chunked_loss_sums",
    "forward_loss_sums",
    "per_example_loss",
    "token_nll",
    "KVCache",
    "PrefixKV",
    "init_cache",
    "forward_cached",
    "split_layers",
    "layer_params",
    "output_head",
]


def forward(
    cfg: ModelConfig,
    params: Params,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    return_hidden: bool = False,
    prefix: PrefixKV | None = None,
    return_kv: bool = False,
) -> Any:
    """Logits [B, T, V] in float32 for int tokens [B, T].

    ``positions`` (RoPE positions, default 0..T-1) and ``segment_ids`` (tokens attend only within their
    segment, default one segment) let packed documents be kept apart. ``return_hidden`` gives the final hidden
    states [B, T, D] instead; ``return_kv`` gives each layer's (keys, values) [layers, B, KV, T, hd] instead, to
    serve as the ``prefix`` of a later call whose tokens follow them (see :class:`PrefixKV`).
    """
    return Decoder(cfg).apply(
        {"params": params},
        tokens,
        positions=positions,
        segment_ids=segment_ids,
        return_hidden=return_hidden,
        prefix=prefix,
        return_kv=return_kv,
    )


def forward_loss_sums(
    cfg: ModelConfig,
    params: Params,
    inputs: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array | None = None,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> LossSums:
    """Next-token :class:`LossSums` of ``targets`` under the model on ``inputs``.

    With ``cfg.loss_chunk`` > 0 the output head and the loss run over that many positions at a time
    (:func:`chunked_loss_sums`), so the full float32 [B, T, V] logits never exist, forward or backward.
    """
    if not cfg.loss_chunk:
        logits = forward(cfg, params, inputs, positions=positions, segment_ids=segment_ids)
        return loss_sums(logits, targets, loss_mask)
    hidden = forward(cfg, params, inputs, positions=positions, segment_ids=segment_ids, return_hidden=True)
    head = output_head(cfg, params)

    def logits_fn(h):
        return sharding.constrain(unembed(cfg, head, h), ("batch", "length", "vocab"))

    return chunked_loss_sums(logits_fn, hidden, targets, loss_mask, chunk=cfg.loss_chunk)


def init_cache(cfg: ModelConfig, segments: jax.Array, dtype: Any = None) -> KVCache:
    """An empty KV cache for ``segments`` [B, S] (the segment id of every slot; 0 = padding).

    ``dtype`` defaults to the compute dtype; a float32 cache under bf16 compute keeps attention in float32.
    """
    b, s = segments.shape
    shape = (b, cfg.num_kv_heads, s, cfg.head_dim)
    dtype = cfg.compute_dtype if dtype is None else dtype
    k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(k, v, segments.astype(jnp.int32))


def split_layers(params: Params) -> Params:
    """The params with ``layers`` as a list of per-layer trees (what a decode loop wants: no per-step slicing)."""
    if isinstance(params["layers"], (list, tuple)):
        return params
    num = jax.tree.leaves(params["layers"])[0].shape[0]
    return {**params, "layers": [layer_params(params, i) for i in range(num)]}


def forward_cached(
    cfg: ModelConfig,
    params: Params,
    tokens: jax.Array,
    cache: KVCache,
    cache_index: jax.Array | int,
    *,
    positions: jax.Array,
    segment_ids: jax.Array | None = None,
    prefix: PrefixKV | None = None,
) -> tuple[jax.Array, KVCache]:
    """Run tokens [B, T] into cache slots ``cache_index..cache_index+T``.

    Returns the float32 logits of the last slot [B, V] (the next-token distribution) and the updated cache.
    ``positions`` are the RoPE positions of the new tokens (with left padding they differ from slot numbers);
    ``segment_ids`` default to 1 (real tokens). ``params`` may be stacked or :func:`split_layers`. ``prefix``
    adds shared slots ahead of the cache (a prompt's, read once for its G completions; see :class:`PrefixKV`).
    """
    if segment_ids is None:
        segment_ids = jnp.ones(tokens.shape, jnp.int32)
    return decode(cfg, params, tokens, positions, segment_ids, cache, cache_index, prefix)


def _boxed_init(cfg: ModelConfig, rng: jax.Array):
    tokens = jnp.zeros((1, 1), jnp.int32)  # the parameters do not depend on the attention kernel
    return Decoder(cfg.replace(attention="reference")).init(rng, tokens)["params"]


def random_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random float32 parameters as a plain pytree (traceable: use inside jit with the shardings you need)."""
    return nn.unbox(_boxed_init(cfg, rng))


def init_params(
    cfg: ModelConfig, rng: jax.Array, mesh: Mesh | None = None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> Params:
    """Random float32 parameters; created directly in their shards when a mesh is given."""
    init = functools.partial(random_params, cfg)
    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(cfg, mesh, rules))(rng)


@functools.lru_cache(maxsize=64)
def _abstract_boxed(cfg: ModelConfig):
    return jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.key(0))


def abstract_params(cfg: ModelConfig) -> Params:
    """ShapeDtypeStructs of the parameters, without allocating them."""
    return nn.unbox(_abstract_boxed(cfg))


def param_logical_axes(cfg: ModelConfig) -> Params:
    """A pytree like the params whose leaves are tuples of logical axis names."""
    specs = nn.get_partition_spec(_abstract_boxed(cfg))
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> Params:
    """NamedShardings of the parameters under ``rules``."""
    return sharding.tree_shardings(param_logical_axes(cfg), abstract_params(cfg), mesh, rules)
