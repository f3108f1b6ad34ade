"""OLMo-2 style decoder in Flax linen, and the Qwen3 layout beside it (``ModelConfig.architecture``).

Differences from a Llama block, all following OLMo-2: RMSNorm is applied to each sublayer's *output* before the
residual add (no pre-norm), q and k get an RMSNorm over their full projected width, there are no biases and the
output head is untied. Qwen3 (``architecture="qwen3"``) is the Llama order instead: RMSNorm on each sublayer's
input (``pre_attn_norm``, ``pre_mlp_norm``) and q/k normed per head over head_dim with one [head_dim] scale;
its head may be tied to the embedding (``tie_embeddings``: no ``lm_head`` parameter, see :func:`output_head`).
Layers are stacked with ``nn.scan`` (one compiled block; parameters get a leading ``layers`` axis). Every
parameter carries logical axis names for :mod:`synpro_jax.sharding`.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import NamedTuple

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from synpro_jax.models import attention
from synpro_jax.models.attention import attention_mask, dot_product_attention
from synpro_jax.models.config import PROJECTION_NAMES, ModelConfig
from synpro_jax.sharding import constrain

_INIT_STD = 0.02


def _param_init(names: Sequence[str], init=nn.initializers.normal(_INIT_STD)):
    return nn.with_logical_partitioning(init, tuple(names))


class RMSNorm(nn.Module):
    """RMSNorm over the trailing ``len(names)`` axes, computed in float32 like HF's Olmo2RMSNorm."""

    eps: float
    names: tuple[str, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.names)
        scale = self.param("scale", _param_init(self.names, nn.initializers.ones), x.shape[-n:], jnp.float32)
        xf = x.astype(jnp.float32)
        axes = tuple(range(-n, 0))
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=axes, keepdims=True) + self.eps)
        return (scale * y).astype(x.dtype)


class Dense(nn.Module):
    """Bias-free projection from the trailing ``len(in_names)`` axes to ``features``, float32 parameters.

    Computed as one 2-D matmul [rows, in] @ [in, out]: XLA:CPU runs the backward of multi-axis dot_generals
    about 2x slower than the same 2-D matmuls, and the reshapes are free.
    """

    features: tuple[int, ...]
    in_names: tuple[str, ...]
    out_names: tuple[str, ...]
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_names)
        in_shape, lead = x.shape[-n_in:], x.shape[:-n_in]
        kernel = self.param(
            "kernel", _param_init(self.in_names + self.out_names), in_shape + tuple(self.features), jnp.float32
        )
        k_in, k_out = math.prod(in_shape), math.prod(self.features)
        y = jnp.dot(
            x.reshape(-1, k_in).astype(self.dtype),
            kernel.reshape(k_in, k_out).astype(self.dtype),
            preferred_element_type=jnp.float32,
        )  # bf16 inputs, fp32 accumulation
        return y.astype(self.dtype).reshape(lead + tuple(self.features))


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half RoPE (as HF/OLMo): x [B, T, N, hd], positions [B, T]. Computed in float32."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


class KVCache(NamedTuple):
    """Keys and values, one [B, KV, S, hd] buffer per layer (compute dtype unless init_cache is given another),
    and the segment id of every slot [B, S] (0 marks left padding, which no real token attends to).

    Separate per-layer buffers (not one [L, ...] array) let each decode step update and read a layer in place:
    slicing a layer out of a stacked cache costs a copy of it every step.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    segments: jax.Array

    @staticmethod
    def logical_axes(num_layers: int) -> KVCache:
        kv = ("batch", "kv_heads", "length", "head_dim")
        return KVCache((kv,) * num_layers, (kv,) * num_layers, ("batch", "length"))


def _write_cache(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """new [B, KV, T, hd] into buf [B, KV, S, hd] at slot ``index``: one slot for all rows (a scalar), or one per
    row ([B]: continuous batching, where every row is at its own length; written in place by a scatter)."""
    new = new.astype(buf.dtype)
    if jnp.ndim(index) == 0:
        zero = jnp.zeros((), jnp.int32)
        return jax.lax.dynamic_update_slice(buf, new, (zero, zero, index, zero))
    b, _, t, _ = new.shape
    cols = index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B, T]
    rows = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, t))
    return buf.at[rows, :, cols, :].set(new.transpose(0, 2, 1, 3), mode="drop")


class Attention(nn.Module):
    cfg: ModelConfig
    fused: str = ""  # a fused kernel (see models.attention); then ``mask`` is the segment ids [B, T] or None

    @nn.compact
    def __call__(self, x, positions, mask, cache=None, prefix=None, return_kv=False, prefix_repeat=1):
        """``cache`` = (k, v, index) of this layer: the new keys/values go into slots index.. and attention reads
        the whole buffer; the updated (k, v) is returned alongside the output.

        ``prefix`` = (k, v) of this layer: keys/values [B/prefix_repeat, KV, S, hd] of S slots that precede every
        token of x, each shared by ``prefix_repeat`` consecutive rows (a prompt's K/V serve all its completions,
        read once per group: see :func:`dot_product_attention`). ``return_kv`` returns this call's own (k, v)
        [B, KV, T, hd] instead of the cache. ``mask`` covers the prefix slots first."""
        cfg, dt = self.cfg, self.cfg.compute_dtype
        heads = (cfg.num_heads, cfg.head_dim)
        kv_heads = (cfg.num_kv_heads, cfg.head_dim)
        q = checkpoint_name(Dense(heads, ("embed",), ("heads", "head_dim"), dt, name="q_proj")(x), "q_proj")
        k = checkpoint_name(Dense(kv_heads, ("embed",), ("kv_heads", "head_dim"), dt, name="k_proj")(x), "k_proj")
        v = checkpoint_name(Dense(kv_heads, ("embed",), ("kv_heads", "head_dim"), dt, name="v_proj")(x), "v_proj")
        per_head = cfg.architecture == "qwen3"  # one [head_dim] scale for all heads, else one per (head, dim)
        q = RMSNorm(cfg.norm_eps, ("head_dim",) if per_head else ("heads", "head_dim"), name="q_norm")(q)
        k = RMSNorm(cfg.norm_eps, ("head_dim",) if per_head else ("kv_heads", "head_dim"), name="k_norm")(k)
        q = constrain(rotary(q, positions, cfg.rope_theta), ("batch", "length", "heads", "head_dim"))
        k = constrain(rotary(k, positions, cfg.rope_theta), ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        if self.fused:
            out = attention.fused_attention(q, k, v, mask, self.fused)
            return self._out(out), None
        kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, T, hd]
        new_cache = None
        if cache is not None:
            k_buf, v_buf, index = cache
            k_buf, v_buf = _write_cache(k_buf, kh, index), _write_cache(v_buf, vh, index)
            new_cache = kh, vh = k_buf, v_buf
        elif return_kv:
            new_cache = (kh, vh)
        out = dot_product_attention(q, kh, vh, mask, prefix, prefix_repeat)
        return self._out(out), new_cache

    def _out(self, out):
        cfg = self.cfg
        o = Dense((cfg.d_model,), ("heads", "head_dim"), ("embed",), cfg.compute_dtype, name="o_proj")(out)
        return checkpoint_name(o, "o_proj")


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        gate = checkpoint_name(Dense((cfg.mlp_dim,), ("embed",), ("mlp",), dt, name="gate_proj")(x), "gate_proj")
        up = checkpoint_name(Dense((cfg.mlp_dim,), ("embed",), ("mlp",), dt, name="up_proj")(x), "up_proj")
        hidden = constrain(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return checkpoint_name(Dense((cfg.d_model,), ("mlp",), ("embed",), dt, name="down_proj")(hidden), "down_proj")


class Block(nn.Module):
    """One decoder layer in OLMo-2 order: x + norm(attn(x)), then h + norm(mlp(h)); for Qwen3 in pre-norm order:
    x + attn(norm(x)), then h + mlp(norm(h)).

    Returns (x, None) as a scan body; with a layer cache (k, v, index), or ``return_kv``, it returns
    (x, (k, v)) instead. ``prefix`` is the layer's shared (k, v), each row of it repeated for ``prefix_repeat``
    rows of x (see :class:`Attention`).
    """

    cfg: ModelConfig
    return_kv: bool = False
    prefix_repeat: int = 1
    fused: str = ""

    @nn.compact
    def __call__(self, x, positions, mask, cache=None, prefix=None):
        cfg = self.cfg
        attn = Attention(cfg, self.fused, name="attn")
        if cfg.architecture == "qwen3":
            h, new_cache = attn(
                RMSNorm(cfg.norm_eps, ("embed",), name="pre_attn_norm")(x),
                positions,
                mask,
                cache,
                prefix,
                self.return_kv,
                self.prefix_repeat,
            )
            x = x + h
            x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, ("embed",), name="pre_mlp_norm")(x))
            return constrain(x, ("batch", "length", "embed")), new_cache
        h, new_cache = attn(x, positions, mask, cache, prefix, self.return_kv, self.prefix_repeat)
        x = x + RMSNorm(cfg.norm_eps, ("embed",), name="post_attn_norm")(h)
        h = MLP(cfg, name="mlp")(x)
        x = x + RMSNorm(cfg.norm_eps, ("embed",), name="post_mlp_norm")(h)
        return constrain(x, ("batch", "length", "embed")), new_cache


class PrefixKV(NamedTuple):
    """Keys and values of S slots that precede a batch's tokens, [B/repeat, KV, S, hd] per layer: stacked over
    layers (what ``Decoder(return_kv=True)`` returns for the prefix tokens) or a tuple of layers (a prefilled
    :class:`KVCache`'s); their segment ids [B, S] (per full row); and ``repeat``, how many consecutive rows share
    each prefix row (a prompt and its G completions). The prefix is never copied per row."""

    k: jax.Array
    v: jax.Array
    segments: jax.Array
    repeat: int


class Decoder(nn.Module):
    """tokens [B, T] -> float32 logits [B, T, V] (or final hidden states with ``return_hidden``).

    With ``prefix`` (a :class:`PrefixKV`) the tokens come after the prefix's S slots and attend to them as well;
    ``return_kv`` returns each layer's keys and values [layers, B, KV, T, hd] instead (a prefix for a later call).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens,
        positions=None,
        segment_ids=None,
        return_hidden: bool = False,
        prefix: PrefixKV | None = None,
        return_kv: bool = False,
    ):
        cfg = self.cfg
        b, t = tokens.shape
        index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        positions = index if positions is None else positions
        one_document = segment_ids is None
        segment_ids = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
        # A fused kernel serves plain forwards; keys and values to return, or a prefix, need the reference path.
        fused = attention.resolve(cfg.attention, cfg.compute_dtype, t, cfg.head_dim)
        fused = "" if fused == "reference" or prefix is not None or return_kv else fused
        if fused:
            mask = None if one_document else segment_ids
        elif prefix is None:
            mask = attention_mask(segment_ids, segment_ids, index, index)
        else:  # the prefix's slots 0..S-1 come before every token (slots S..S+T-1)
            s = prefix.segments.shape[1]
            k_index = jnp.broadcast_to(jnp.arange(s + t, dtype=jnp.int32), (b, s + t))
            mask = attention_mask(
                segment_ids, jnp.concatenate([prefix.segments, segment_ids], axis=1), index + s, k_index
            )

        embedding = self.param("embedding", _param_init(("vocab", "embed")), (cfg.vocab_size, cfg.d_model), jnp.float32)
        x = embed(cfg, embedding, tokens)
        policy = {
            "full": None,
            "dots_saveable": jax.checkpoint_policies.dots_saveable,
            "projections": jax.checkpoint_policies.save_only_these_names(*PROJECTION_NAMES),
        }.get(cfg.remat)
        block = Block if cfg.remat == "none" else nn.remat(Block, prevent_cse=False, policy=policy)
        in_axes = (nn.broadcast, nn.broadcast) if prefix is None else (nn.broadcast, nn.broadcast, nn.broadcast, 0)
        layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=in_axes,
            length=cfg.num_layers,
            unroll=cfg.scan_unroll if cfg.scan_layers else cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        if prefix is None:
            x, kv = layers(cfg, return_kv, 1, fused, name="layers")(x, positions, mask)
        else:
            x, kv = layers(cfg, return_kv, prefix.repeat, name="layers")(x, positions, mask, None, (prefix.k, prefix.v))
        if return_kv:
            return kv
        x = RMSNorm(cfg.norm_eps, ("embed",), name="final_norm")(x)
        if return_hidden:
            return x
        if cfg.tie_embeddings:
            head = embedding.T
        else:
            head = self.param("lm_head", _param_init(("embed", "vocab")), (cfg.d_model, cfg.vocab_size), jnp.float32)
        return constrain(unembed(cfg, head, x), ("batch", "length", "vocab"))


def output_head(cfg: ModelConfig, params) -> jax.Array:
    """The output head [D, V] of ``params``: ``lm_head``, or the embedding table transposed when tied. Every
    reader of the head goes through here, so tied models need no ``lm_head`` entry."""
    return params["embedding"].T if cfg.tie_embeddings else params["lm_head"]


def embed(cfg: ModelConfig, embedding: jax.Array, tokens: jax.Array) -> jax.Array:
    # Gather from a whole (all-gathered) table, as FSDP does for every weight: a gather from a sharded table
    # comes out sharded like the table and XLA can only reshard it to batch-sharded by full rematerialization.
    table = constrain(embedding, (None, None))
    x = jnp.take(table, tokens, axis=0).astype(cfg.compute_dtype)
    return constrain(x, ("batch", "length", "embed"))


def unembed(cfg: ModelConfig, head: jax.Array, x: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] -> float32 logits [B, T, V], as one 2-D matmul (as in Dense)."""
    b, t = x.shape[:2]
    logits = jnp.dot(x.reshape(b * t, cfg.d_model), head.astype(cfg.compute_dtype), preferred_element_type=jnp.float32)
    return logits.reshape(b, t, cfg.vocab_size)


def layer_params(params, i: int):
    """Layer i's parameters from a stacked ``layers`` tree, or from a per-layer list (see split_layers)."""
    layers = params["layers"]
    return layers[i] if isinstance(layers, (list, tuple)) else jax.tree.map(lambda x: x[i], layers)


def decode(
    cfg: ModelConfig,
    params,
    tokens,
    positions,
    segment_ids,
    cache: KVCache,
    cache_index,
    prefix: PrefixKV | None = None,
):
    """Tokens [B, T] into cache slots cache_index..cache_index+T: (float32 logits of the last slot [B, V], cache).
    ``cache_index`` is a scalar, or [B] with each row at its own slot (continuous batching; a row whose slots
    run past the cache writes nothing).

    The layers run as an unrolled Python loop over per-layer cache buffers, each updated in place. ``params``
    may hold ``layers`` stacked or split per layer (the sampler splits once so no step slices weights).
    Attention reads the whole cache (slots not yet written are masked as the future): size it to what is needed.
    ``prefix`` (its k and v indexable by layer: stacked, or per-layer tuples) holds slots that precede every
    cache slot and are shared by ``prefix.repeat`` consecutive rows, such as a prompt and its G completions.
    """
    b, t = tokens.shape
    slots = cache.segments.shape[1]
    cache_index = jnp.asarray(cache_index, jnp.int32)  # a scalar, or one slot per row [B]
    per_row = cache_index[:, None] if cache_index.ndim == 1 else cache_index
    q_index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)) + per_row
    k_index = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (b, slots))
    mask = attention_mask(segment_ids, cache.segments, q_index, k_index)
    if prefix is not None:  # every prefix slot comes first: only the segments decide
        mask = jnp.concatenate([segment_ids[:, :, None] == prefix.segments[:, None, :], mask], axis=-1)
    x = embed(cfg, params["embedding"], tokens)
    block = Block(cfg, prefix_repeat=1 if prefix is None else prefix.repeat)
    new_k, new_v = [], []
    for i in range(cfg.num_layers):
        x, (k, v) = block.apply(
            {"params": layer_params(params, i)},
            x,
            positions,
            mask,
            (cache.k[i], cache.v[i], cache_index),
            None if prefix is None else (prefix.k[i], prefix.v[i]),
        )
        new_k.append(k)
        new_v.append(v)
    x = RMSNorm(cfg.norm_eps, ("embed",)).apply({"params": params["final_norm"]}, x[:, -1:])
    logits = unembed(cfg, output_head(cfg, params), x)[:, 0]
    return constrain(logits, ("batch", "vocab")), KVCache(tuple(new_k), tuple(new_v), cache.segments)
