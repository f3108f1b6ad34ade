"""Attention kernels: the reference grouped-query path, and fused kernels for long sequences.

The reference path (:func:`dot_product_attention`) materialises float32 [B, H, T, S] scores; it serves every
call (training, the KV-cached sampler, shared-prompt prefixes) and is the fastest form on XLA:CPU. Training and
scoring forwards without a cache or prefix can instead go through a fused kernel (``ModelConfig.attention``):

- ``xla`` / ``cudnn``: :func:`jax.nn.dot_product_attention`; cuDNN's is the flash kernel on GPU (bf16/fp16).
- ``splash``: the Pallas TPU splash-attention kernel with segment ids; off TPU it runs in interpret mode
  (slow; for tests).
- ``auto``: cuDNN on GPU in half precision, splash on TPU where the shapes tile (T and head_dim multiples of
  128), else ``xla`` on TPU/GPU and the reference on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from synpro_jax.sharding import logical_to_spec

_SPLASH_BLOCK = 128


def attention_mask(q_segments: jax.Array, k_segments: jax.Array, q_index: jax.Array, k_index: jax.Array) -> jax.Array:
    """[B, T, S] bool: causal by slot index and kept within a segment (packed documents do not see each other).

    Indices are slot numbers in the sequence (or KV cache), so the same rule serves training and cached decode.
    """
    causal = k_index[:, None, :] <= q_index[:, :, None]
    same_doc = q_segments[:, :, None] == k_segments[:, None, :]
    return causal & same_doc


def dot_product_attention(
    q: jax.Array,
    kh: jax.Array,
    vh: jax.Array,
    mask: jax.Array,
    prefix: tuple[jax.Array, jax.Array] | None = None,
    repeat: int = 1,
) -> jax.Array:
    """Grouped-query attention. q [B,T,H,hd], kh/vh [B,KV,S,hd] (heads ahead of slots, the KV-cache layout),
    mask [B,T,S] -> [B,T,H,hd].

    Query head h reads kv head h // (H // KV), as HF's repeat_kv does. Scores and softmax are float32. Heads
    are moved ahead of time so both products are plain batched matmuls over (batch, kv head): XLA:CPU runs
    that form about 2x faster than a 5-D einsum.

    ``prefix`` = (k, v) [B/repeat, KV, S0, hd]: slots ahead of kh/vh shared by ``repeat`` consecutive rows (a
    prompt and its G completions); then mask is [B, T, S0 + S], prefix slots first. One softmax covers both
    parts. The prefix is never copied per row: the ``repeat`` rows' queries are stacked against its keys (one
    matmul per prefix row), so a shared prompt is read once per group, not G times.

    Decode (T = 1) uses this same form: on XLA:CPU (jax 0.10) it reads a float32 cache as fast as a plain sum
    over it (~25 GB/s on one core), while a multiply + reduce form runs ~1.4x slower, and both run a bfloat16
    cache ~2.5x slower than float32 in time (~4.5 GB/s: the bf16 operands are converted to a float32 copy, or
    the fused loop is not vectorised): ``python bench/sampler.py`` records these forms, ``decode_attention_forms``.
    """
    b, t, h, hd = q.shape
    kv = kh.shape[1]
    g, bp = h // kv, b // repeat
    qh = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)

    def to_groups(x):  # [B, KV, Q, n] <-> [B/repeat, KV, repeat*Q, n]
        return x.reshape(bp, repeat, kv, -1, x.shape[-1]).transpose(0, 2, 1, 3, 4).reshape(bp, kv, -1, x.shape[-1])

    def from_groups(x):
        return x.reshape(bp, kv, repeat, -1, x.shape[-1]).transpose(0, 2, 1, 3, 4).reshape(b, kv, -1, x.shape[-1])

    scores = jnp.einsum("bkqd,bksd->bkqs", qh, kh, preferred_element_type=jnp.float32)
    s0 = 0
    if prefix is not None:
        k_pre, v_pre = prefix[0].astype(kh.dtype), prefix[1].astype(vh.dtype)
        s0 = k_pre.shape[2]
        s_pre = jnp.einsum("bkqd,bksd->bkqs", to_groups(qh), k_pre, preferred_element_type=jnp.float32)
        scores = jnp.concatenate([from_groups(s_pre), scores], axis=-1)
    scores = (scores * (hd**-0.5)).reshape(b, kv, g, t, -1)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(vh.dtype).reshape(b, kv, g * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs[..., s0:], vh, preferred_element_type=jnp.float32)
    if prefix is not None:
        out = out + from_groups(
            jnp.einsum("bkqs,bksd->bkqd", to_groups(probs[..., :s0]), v_pre, preferred_element_type=jnp.float32)
        )
    return out.astype(vh.dtype).reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def resolve(impl: str, dtype, seq_len: int, head_dim: int, backend: str | None = None) -> str:
    """The kernel ``ModelConfig.attention=impl`` means on this backend for these shapes."""
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend == "gpu":
        return "cudnn" if jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) else "xla"
    if backend == "tpu":
        tiles = seq_len % _SPLASH_BLOCK == 0 and head_dim % _SPLASH_BLOCK == 0
        return "splash" if tiles else "xla"
    return "reference"


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, impl: str) -> jax.Array:
    """Causal grouped-query attention within segments. q [B,T,H,hd], k/v [B,T,KV,hd] -> [B,T,H,hd].

    ``segment_ids`` [B, T] keeps packed documents apart (None: one document per row, the plain causal mask).
    """
    if impl in ("xla", "cudnn"):
        mask = None if segment_ids is None else segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=impl)
    if impl == "splash":
        return _splash(q, k, v, segment_ids)
    raise ValueError(f"fused_attention: no fused kernel {impl!r}; choose xla, cudnn or splash")


def _splash(q, k, v, segment_ids):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa  # TPU kernel, +0.2 s: only when chosen

    b, t = q.shape[:2]
    if t % _SPLASH_BLOCK:
        raise ValueError(
            f"ModelConfig.attention='splash' needs a sequence length that is a multiple of {_SPLASH_BLOCK}; got {t}"
        )
    segment_ids = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _splash_local(q, k, v, segment_ids, sa)
    # The kernel is a custom call XLA cannot partition: run it per shard (batch over the data axes, kv heads and
    # their query heads over the tensor axis).
    spec_q = logical_to_spec(("batch", "length", "heads", "head_dim"), shape=q.shape, mesh=mesh)
    spec_kv = logical_to_spec(("batch", "length", "kv_heads", "head_dim"), shape=k.shape, mesh=mesh)
    if tuple(spec_q)[2:3] != tuple(spec_kv)[2:3]:  # kv heads do not split like the query heads: keep both whole
        spec_q = PartitionSpec(*tuple(spec_q)[:1])
        spec_kv = PartitionSpec(*tuple(spec_kv)[:1])
    spec_seg = PartitionSpec(*tuple(spec_q)[:1])
    fn = jax.shard_map(
        functools.partial(_splash_local, sa=sa),
        in_specs=(spec_q, spec_kv, spec_kv, spec_seg),
        out_specs=spec_q,
        check_vma=False,
    )
    return fn(q, k, v, segment_ids)


def _splash_local(q, k, v, segment_ids, sa):
    b, t, h, hd = q.shape
    kv = k.shape[2]
    g = h // kv
    interpret = jax.default_backend() != "tpu"
    block = sa.BlockSizes(
        block_q=_SPLASH_BLOCK,
        block_kv_compute=_SPLASH_BLOCK,
        block_kv=_SPLASH_BLOCK,
        block_q_dkv=_SPLASH_BLOCK,
        block_kv_dkv=_SPLASH_BLOCK,
        block_kv_dkv_compute=_SPLASH_BLOCK,
        block_q_dq=_SPLASH_BLOCK,
        block_kv_dq=_SPLASH_BLOCK,
    )
    mask = sa.MultiHeadMask([sa.CausalMask((t, t)) for _ in range(g)])
    kernel = sa.make_splash_mqa_single_device(mask, block_sizes=block, interpret=interpret)
    # [B, KV, G, T, hd] queries (the kernel does not scale them), [B, KV, T, hd] keys and values.
    qg = (q * (hd**-0.5)).astype(q.dtype).reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4)
    kg, vg = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def one_row(qr, kr, vr, seg):  # qr [KV, G, T, hd]
        ids = sa.SegmentIds(q=seg, kv=seg)
        return jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(one_row)(qg, kg, vg, segment_ids)  # [B, KV, G, T, hd]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(v.dtype)


__all__ = ["attention_mask", "dot_product_attention", "fused_attention", "resolve"]
