"""Train step pieces: accumulation, optimizer masks and schedules, and that training learns."""

import jax
import numpy as np
import optax
import pytest

from synpro_jax import models, sharding
from synpro_jax.train import OptimizerConfig, TrainStep, decay_mask, make_schedule, next_token_batch


def test_gradient_accumulation_equals_one_pass():
    cfg = models.get_preset("tiny")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(8, 17))
    mask = (rng.random((8, 17)) > 0.4).astype(np.float32)  # uneven token counts per micro-batch
    batch = next_token_batch(tokens, mask)
    params = models.init_params(cfg, jax.random.key(0))
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 1, 1), devices=jax.devices()[:2])
    one = TrainStep(cfg, mesh, z_loss=1e-4)
    four = TrainStep(cfg, mesh, z_loss=1e-4, accum_steps=4)
    s1, g1 = one.loss_and_grads(jax.device_put(params, one.param_shardings), one.shard_batch(batch))
    s4, g4 = four.loss_and_grads(jax.device_put(params, four.param_shardings), four.shard_batch(batch))
    np.testing.assert_allclose(float(s1.loss(1e-4)), float(s4.loss(1e-4)), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_batch_token_normalization_divides_by_every_input_position():
    """The default divides the summed loss by the unmasked targets (pretraining's mean, unchanged);
    loss_normalization="batch_tokens" (the probe's, OLMo's) by every input position of the batch, masked or not,
    also under accumulation (the whole batch's count, not a micro-batch's)."""
    cfg = models.get_preset("tiny")
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg.vocab_size, size=(8, 17))
    mask = (rng.random((8, 17)) > 0.6).astype(np.float32)
    batch = next_token_batch(tokens, mask)
    params = models.init_params(cfg, jax.random.key(0))
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 1, 1), devices=jax.devices()[:2])
    default = TrainStep(cfg, mesh, z_loss=1e-4)
    assert default.loss_normalization == "loss_tokens"
    sums, g_mean = default.loss_and_grads(jax.device_put(params, default.param_shardings), default.shard_batch(batch))
    answer = float(mask[:, 1:].sum())
    assert float(sums.tokens) == answer
    step = TrainStep(cfg, mesh, z_loss=1e-4, accum_steps=4, loss_normalization="batch_tokens")
    s, g = step.loss_and_grads(jax.device_put(params, step.param_shardings), step.shard_batch(batch))
    assert float(s.tokens) == answer  # the sums are the same: only the denominator changes
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_mean)):
        np.testing.assert_allclose(a, np.asarray(b) * answer / (8 * 16), atol=1e-7)
    state = step.init(jax.random.key(0), params=params)
    _, metrics = step(state, step.shard_batch(batch))
    assert float(metrics["loss"]) == pytest.approx(float(sums.nll) / answer, rel=1e-5)  # still a mean per token
    assert float(metrics["total_loss"]) == pytest.approx(float(sums.nll + 1e-4 * sums.z) / (8 * 16), rel=1e-5)
    with pytest.raises(ValueError, match="TrainStep.loss_normalization='answer_tokens': must be one of"):
        TrainStep(cfg, mesh, loss_normalization="answer_tokens")


def test_decay_mask_skips_embeddings_and_decays_norms_by_default():
    """The release decays norms (decay_norm_and_bias: true) but never the embedding table."""
    abstract = models.abstract_params(models.get_preset("tiny"))
    mask = decay_mask(abstract)
    assert OptimizerConfig().decay_norms is True
    assert mask["embedding"] is False
    assert mask["final_norm"]["scale"] is True
    assert mask["layers"]["attn"]["q_norm"]["scale"] is True
    assert mask["layers"]["post_mlp_norm"]["scale"] is True
    assert mask["lm_head"] is True
    assert mask["layers"]["mlp"]["gate_proj"]["kernel"] is True
    no_norms = decay_mask(abstract, decay_norms=False)
    assert no_norms["final_norm"]["scale"] is False and no_norms["layers"]["post_attn_norm"]["scale"] is False
    assert no_norms["embedding"] is False and no_norms["lm_head"] is True


def test_weight_decay_leaves_embedding_alone():
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, jax.random.key(0))
    opt = OptimizerConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=None)
    from synpro_jax.train import make_optimizer

    tx = make_optimizer(opt)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(abs(updates["embedding"]).max()) == 0.0
    np.testing.assert_allclose(updates["lm_head"], -0.1 * 0.5 * params["lm_head"], rtol=1e-6)
    np.testing.assert_allclose(updates["final_norm"]["scale"], -0.1 * 0.5 * params["final_norm"]["scale"], rtol=1e-6)


def test_schedules():
    const = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10))
    assert float(const(0)) == 0.0 and float(const(5)) == pytest.approx(0.5) and float(const(500)) == 1.0
    cos = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="cosine", total_steps=110))
    assert float(cos(10)) == pytest.approx(1.0) and float(cos(110)) == pytest.approx(0.1)
    assert float(cos(60)) == pytest.approx(0.55, abs=1e-6)
    lin = make_schedule(
        OptimizerConfig(learning_rate=1.0, warmup_steps=0, schedule="linear", total_steps=100, final_lr_ratio=0.0)
    )
    assert float(lin(50)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="total_steps=None"):
        OptimizerConfig(schedule="cosine")


def test_training_learns_a_repeating_pattern():
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    step = TrainStep(cfg, mesh, OptimizerConfig(learning_rate=3e-3, warmup_steps=5))
    state = step.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    first = None
    for _ in range(40):
        start = rng.integers(0, 16, size=(8, 1))
        tokens = (start + np.arange(33)) % 16  # next token = current + 1 (mod 16)
        state, metrics = step(state, step.shard_batch(next_token_batch(tokens)))
        first = float(metrics["loss"]) if first is None else first
    assert first > 4.0 and float(metrics["loss"]) < 0.5
    assert int(state.step) == 40


def test_batch_validation():
    step = TrainStep(models.get_preset("tiny"), sharding.single_device_mesh())
    with pytest.raises(ValueError, match="need 'inputs' and 'targets'"):
        step.shard_batch({"tokens": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="batch\\['targets'\\] has shape"):
        step.shard_batch({"inputs": np.zeros((2, 3)), "targets": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="accum_steps=0"):
        TrainStep(models.get_preset("tiny"), sharding.single_device_mesh(), accum_steps=0)


def test_init_from_given_params_keeps_them():
    cfg = models.get_preset("tiny")
    params = jax.device_get(models.init_params(cfg, jax.random.key(7)))
    step = TrainStep(cfg, sharding.make_mesh(sharding.MeshConfig(2, 2, 2)))
    state = step.init(jax.random.key(0), params=params)
    np.testing.assert_array_equal(np.asarray(state.params["lm_head"]), params["lm_head"])
    assert int(state.step) == 0
    assert optax.tree.norm(state.opt_state[1][0].mu) == 0


def test_bfloat16_compute_trains_with_fp32_master_weights():
    cfg = models.get_preset("tiny", dtype="bfloat16")
    step = TrainStep(
        cfg, sharding.make_mesh(sharding.MeshConfig(2, 2, 2)), OptimizerConfig(learning_rate=3e-3, warmup_steps=0)
    )
    state = step.init(jax.random.key(0))
    losses = []
    for i in range(25):
        tokens = (np.random.default_rng(i).integers(0, 16, size=(8, 1)) + np.arange(33)) % 16
        state, metrics = step(state, step.shard_batch(next_token_batch(tokens)))
        losses.append(float(metrics["loss"]))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
    assert losses[-1] < losses[0] - 1.0
