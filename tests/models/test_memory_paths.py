"""The memory-saving paths agree with the plain ones: chunked loss, fused attention kernels, remat policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.models import ModelConfig, attention

SMALL = dict(
    vocab_size=97,
    d_model=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    mlp_dim=128,
    max_seq_len=256,
    rope_theta=10_000.0,
)


def packed_batch(b, t, vocab, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(b, t + 1))
    cut = rng.integers(1, t, size=b)
    segments = np.where(np.arange(t)[None] < cut[:, None], 1, 2).astype(np.int32)
    positions = np.where(segments == 1, np.arange(t)[None], np.arange(t)[None] - cut[:, None]).astype(np.int32)
    mask = (rng.random((b, t)) > 0.2).astype(np.float32)
    return dict(
        inputs=jnp.asarray(tokens[:, :-1]),
        targets=jnp.asarray(tokens[:, 1:]),
        loss_mask=jnp.asarray(mask),
        positions=jnp.asarray(positions),
        segment_ids=jnp.asarray(segments),
    )


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_loss_equals_the_dense_loss_with_gradients(chunk):
    rng = np.random.default_rng(1)
    b, t, d, v = 3, 16, 8, 50
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(d, v)), jnp.float32) * 2
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)))
    mask = jnp.asarray(rng.random((b, t)) > 0.3, jnp.float32)

    def dense(h, w):
        s = models.loss_sums(h @ w, targets, mask)
        return s.loss(1e-2), s

    def chunked(h, w):
        s = models.chunked_loss_sums(lambda x: x @ w, h, targets, mask, chunk=chunk)
        return s.loss(1e-2), s

    (l1, s1), g1 = jax.value_and_grad(dense, argnums=(0, 1), has_aux=True)(hidden, head)
    (l2, s2), g2 = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, head)
    for a, c in zip(s1, s2):
        np.testing.assert_allclose(float(c), float(a), rtol=1e-5)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
    for a, c in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_chunked_loss_holds_no_full_logits():
    """XLA's plan for the chunked loss's backward pass needs a few [B, chunk, V] buffers whatever T is; the dense
    loss needs at least the [B, T, V] logits."""
    b, d, v, chunk = 2, 8, 4096, 16

    def peak_temp(fn, t):
        args = (jnp.ones((b, t, d), jnp.float32), jnp.ones((d, v), jnp.float32), jnp.zeros((b, t), jnp.int32))
        compiled = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def dense(h, w, y):
        return models.loss_sums(h @ w, y).loss()

    def chunked(h, w, y):
        return models.chunked_loss_sums(lambda x: x @ w, h, y, chunk=chunk).loss()

    one_chunk = b * chunk * v * 4
    for t in (64, 512):
        assert peak_temp(dense, t) >= b * t * v * 4
        assert peak_temp(chunked, t) < 4 * one_chunk + b * t * d * 8, t  # chunk buffers plus hidden-sized ones


def test_model_loss_chunk_equals_the_dense_model_loss():
    cfg = ModelConfig(**SMALL)
    params = models.init_params(cfg, jax.random.key(0))
    batch = packed_batch(2, 24, cfg.vocab_size)

    def loss(c, p):
        return models.forward_loss_sums(
            c,
            p,
            batch["inputs"],
            batch["targets"],
            batch["loss_mask"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
        ).loss(1e-4)

    l1, g1 = jax.value_and_grad(lambda p: loss(cfg, p))(params)
    l2, g2 = jax.value_and_grad(lambda p: loss(cfg.replace(loss_chunk=7), p))(params)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "splash"])
@pytest.mark.parametrize("packed", [False, True])
def test_fused_attention_matches_the_reference(impl, packed):
    """Forward and gradient of the whole model, through each kernel (splash in interpret mode off TPU)."""
    cfg = ModelConfig(**SMALL, attention="reference")
    params = models.init_params(cfg, jax.random.key(1))
    batch = packed_batch(2, 128, cfg.vocab_size, seed=2)
    kw = dict(positions=batch["positions"], segment_ids=batch["segment_ids"]) if packed else {}

    def loss(c, p):
        return models.forward_loss_sums(c, p, batch["inputs"], batch["targets"], **kw).loss()

    ref_logits = models.forward(cfg, params, batch["inputs"], **kw)
    logits = models.forward(cfg.replace(attention=impl), params, batch["inputs"], **kw)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-4)
    g1 = jax.grad(lambda p: loss(cfg, p))(params)
    g2 = jax.grad(lambda p: loss(cfg.replace(attention=impl), p))(params)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-4)


def test_fused_attention_on_a_sharded_mesh_matches_one_device():
    """Splash runs per shard under shard_map; XLA's kernel is partitioned by XLA. Both equal the reference."""
    cfg = ModelConfig(**SMALL, attention="reference")
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    params = models.init_params(cfg, jax.random.key(2), mesh)
    batch = packed_batch(4, 128, cfg.vocab_size, seed=3)
    ref = models.forward(cfg, params, batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    for impl in ("xla", "splash"):
        c = cfg.replace(attention=impl)
        fn = jax.jit(
            lambda p, b, c=c: models.forward(c, p, b["inputs"], positions=b["positions"], segment_ids=b["segment_ids"])
        )
        with jax.set_mesh(mesh):
            out = fn(params, batch)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4, err_msg=impl)


def test_auto_picks_a_kernel_per_backend():
    f32, bf16 = jnp.float32, jnp.bfloat16
    assert attention.resolve("auto", f32, 2048, 128, backend="cpu") == "reference"
    assert attention.resolve("auto", bf16, 2048, 128, backend="gpu") == "cudnn"
    assert attention.resolve("auto", f32, 2048, 128, backend="gpu") == "xla"
    assert attention.resolve("auto", bf16, 2048, 128, backend="tpu") == "splash"
    assert attention.resolve("auto", bf16, 2048, 64, backend="tpu") == "xla"  # head_dim does not tile
    assert attention.resolve("splash", f32, 100, 64, backend="cpu") == "splash"  # an explicit choice stands


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "projections"])
def test_remat_policies_give_the_same_gradients(policy):
    cfg = ModelConfig(**SMALL)
    params = models.init_params(cfg, jax.random.key(3))
    batch = packed_batch(2, 16, cfg.vocab_size, seed=4)

    def loss(c, p):
        return models.forward_loss_sums(c, p, batch["inputs"], batch["targets"]).loss()

    g1 = jax.grad(lambda p: loss(cfg, p))(params)
    g2 = jax.grad(lambda p: loss(cfg.replace(remat=policy), p))(params)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-6)


def _saved(cfg, params, batch) -> str:
    """What the backward pass keeps of a forward, as JAX prints it."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(
            lambda p: models.forward_loss_sums(cfg, p, batch["inputs"], batch["targets"]).loss(), params
        )
    return out.getvalue()


def test_the_projections_policy_keeps_the_named_projections_and_not_the_attention_scores():
    cfg = ModelConfig(**SMALL)
    params = models.init_params(cfg, jax.random.key(3))
    b, t, L, h, kv, hd = 2, 16, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    batch = packed_batch(b, t, cfg.vocab_size, seed=4)

    def per_layer(text):  # shapes the layer scan saves for the backward pass, with how many of each
        import collections
        import re

        return collections.Counter(re.findall(r"(\S+) output of scan", text))

    saved = per_layer(_saved(cfg.replace(remat="projections"), params, batch))
    expected = {
        f"f32[{L},{b},{t},{h},{hd}]": 1,  # q
        f"f32[{L},{b},{t},{kv},{hd}]": 2,  # k, v
        f"f32[{L},{b},{t},{cfg.mlp_dim}]": 2,  # gate, up
        f"f32[{L},{b},{t},{cfg.d_model}]": 3,  # o, down, and each layer's input
        f"f32[{b},{t},{cfg.d_model}]": 1,
    }  # the scan's carry
    assert saved == expected, saved
    dots = per_layer(_saved(cfg.replace(remat="dots_saveable"), params, batch))
    assert dots != saved  # dots_saveable keeps every matmul (the attention scores too), as 2-D dot outputs


def test_unscanned_layers_give_the_same_logits_and_gradients():
    cfg = ModelConfig(**SMALL)
    params = models.init_params(cfg, jax.random.key(5))
    batch = packed_batch(2, 16, cfg.vocab_size, seed=6)
    flat = cfg.replace(scan_layers=False)
    np.testing.assert_allclose(
        np.asarray(models.forward(flat, params, batch["inputs"])),
        np.asarray(models.forward(cfg, params, batch["inputs"])),
        atol=1e-5,
    )

    def loss(c, p):
        return models.forward_loss_sums(c, p, batch["inputs"], batch["targets"]).loss()

    for a, b in zip(
        jax.tree.leaves(jax.grad(lambda p: loss(cfg, p))(params)),
        jax.tree.leaves(jax.grad(lambda p: loss(flat, p))(params)),
    ):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    # Unscanned, the program holds every layer's matmuls; scanned, one body inside a loop.
    text = jax.jit(lambda p: models.forward(flat, p, batch["inputs"])).lower(params).as_text()
    assert (
        "while" not in text
        and "while" in jax.jit(lambda p: models.forward(cfg, p, batch["inputs"])).lower(params).as_text()
    )


def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="ModelConfig.remat='some'"):
        ModelConfig(**SMALL, remat="some")
    with pytest.raises(ValueError, match="ModelConfig.attention='flash'"):
        ModelConfig(**SMALL, attention="flash")
    with pytest.raises(ValueError, match="ModelConfig.loss_chunk=-1"):
        ModelConfig(**SMALL, loss_chunk=-1)
    assert ModelConfig(**SMALL, remat=True).remat == "full"
    assert ModelConfig(**SMALL, remat=False).remat == "none"
