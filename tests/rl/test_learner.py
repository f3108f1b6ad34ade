"""The GRPO learner: completion log-probs against NumPy, accumulation and sharding equal one big batch on one
device, and a positive advantage raises a completion's log-prob."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.rl import grpo
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.rl.learner import GRPOStep, _split, _unsplit, check_batch, micro_layout, token_logprobs

CFG = models.get_preset("tiny")
AGG_MODES = ("token-mean", "sequence-mean-token-mean", "sequence-sum-fixed-length")
PAD = 0


@pytest.fixture(scope="module")
def params():
    return models.init_params(CFG, jax.random.key(0))


def make_batch(b=16, p=8, c=8, seed=0, with_old=True, with_ref=True):
    """Left-padded prompts of varied length, completions of varied length (one empty row), pads after the end."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (b, p + c)).astype(np.int32)
    segment_ids = np.ones((b, p + c), np.int32)
    positions = np.zeros((b, p + c), np.int32)
    mask = np.zeros((b, c), bool)
    for i in range(b):
        pad = i % 4
        n = c if i == 1 else 0 if i == 2 else int(rng.integers(1, c + 1))
        tokens[i, :pad] = PAD
        tokens[i, p + n :] = PAD
        segment_ids[i, :pad] = 0
        segment_ids[i, p + n :] = 0
        positions[i, pad:] = np.arange(p + c - pad)
        mask[i, :n] = True
    batch = {
        "tokens": tokens,
        "positions": positions,
        "segment_ids": segment_ids,
        "completion_mask": mask,
        "advantages": rng.normal(size=b).astype(np.float32),
    }
    # Log-probs of the random tiny model are near -log(256) = -5.5; spread the old ones so some ratios clip.
    if with_old:
        batch["old_logp"] = np.where(mask, -5.55 + 0.3 * rng.normal(size=(b, c)), 0).astype(np.float32)
    if with_ref:
        batch["ref_logp"] = np.where(mask, -5.55 + 0.3 * rng.normal(size=(b, c)), 0).astype(np.float32)
    return batch


def grpo_cfg(**kw):
    base = dict(
        num_generations=2,
        num_iterations=2,
        beta=0.04,
        epsilon=0.1,
        epsilon_high=0.15,
        learning_rate=1e-3,
        max_completion_tokens=8,
    )
    base.update(kw)
    return GRPOConfig(**base)


def make_step(mesh, gcfg, accum_steps=1, logits_chunk=None, prompt_group=1):
    # eps=1: Adam's first update is lr * g / (|g| + 1), which follows the gradient's size, not just its sign,
    # so comparing params after a step compares gradients.
    opt_cfg = gcfg.optimizer_config(10, warmup_steps=0, eps=1.0)
    return GRPOStep(
        CFG, mesh, gcfg, opt_cfg, accum_steps=accum_steps, logits_chunk=logits_chunk, prompt_group=prompt_group
    )


def host(tree):
    return jax.tree.map(np.asarray, tree)


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path)
        )


def assert_metrics_close(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-5, atol=1e-6, err_msg=k)


# --------------------------------------------------------------------------------------------- token log-probs


def test_token_logprobs_match_numpy_log_softmax_with_left_padding(params):
    batch = make_batch(b=8, p=8, c=6, seed=1)
    temperature = 0.7
    fn = jax.jit(
        lambda p, b: token_logprobs(
            CFG, p, b["tokens"], b["positions"], b["segment_ids"], b["completion_mask"], temperature
        )
    )
    got = np.asarray(fn(params, batch))
    assert got.shape == (8, 6)

    # Independent: the full forward's logits, then log-softmax, alignment and masking in float64 NumPy.
    logits = (
        np.asarray(
            models.forward(
                CFG, params, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"]
            ),
            np.float64,
        )
        / temperature
    )
    p, c = 8, 6
    want = np.zeros((8, c))
    for i in range(8):
        for j in range(c):
            if batch["completion_mask"][i, j]:
                z = logits[i, p - 1 + j]
                lse = z.max() + np.log(np.exp(z - z.max()).sum())
                want[i, j] = z[batch["tokens"][i, p + j]] - lse
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.all(got[~batch["completion_mask"]] == 0)

    # Left padding changes nothing: the same rows laid out without pads (prompt slots cut to the real ones).
    row = 3  # 3 pad slots
    pad = row % 4
    unpadded = {k: batch[k][row : row + 1, pad:] for k in ("tokens", "positions", "segment_ids")}
    unpadded["completion_mask"] = batch["completion_mask"][row : row + 1]
    np.testing.assert_array_equal(unpadded["positions"][0, : p - pad], np.arange(p - pad))
    alone = np.asarray(fn(params, unpadded))
    np.testing.assert_allclose(alone[0], got[row], atol=1e-5, rtol=0)


def test_chunked_output_head_gives_the_same_logprobs_and_gradients(params):
    batch = make_batch(b=4, p=8, c=8, seed=5)
    args = tuple(batch[k] for k in ("tokens", "positions", "segment_ids", "completion_mask"))

    def total(p, chunk):
        logp = token_logprobs(CFG, p, *args, 0.8, chunk)
        return jnp.sum(logp * jnp.asarray(batch["advantages"])[:, None]), logp

    (v_all, lp_all), g_all = jax.jit(jax.value_and_grad(lambda p: total(p, None), has_aux=True))(params)
    (v_chunk, lp_chunk), g_chunk = jax.jit(jax.value_and_grad(lambda p: total(p, 2), has_aux=True))(params)
    np.testing.assert_allclose(np.asarray(lp_chunk), np.asarray(lp_all), atol=1e-5, rtol=0)
    assert np.any(np.asarray(lp_all) != 0)
    assert_trees_close(g_chunk, g_all, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="logits_chunk=3"):
        token_logprobs(CFG, params, *args, 1.0, 3)


def test_token_logprobs_need_a_prompt_slot(params):
    b = make_batch(b=2, p=4, c=4)
    with pytest.raises(ValueError, match="at least one prompt slot"):
        token_logprobs(
            CFG, params, b["tokens"][:, 4:], b["positions"][:, 4:], b["segment_ids"][:, 4:], b["completion_mask"]
        )


# ---------------------------------------------------------------------------------------------- shared prompts


def make_group_batch(groups=4, g=4, p=8, c=6, seed=7, **kw):
    """make_batch with each run of g rows given its first row's prompt slots (a rollout's layout)."""
    batch = make_batch(b=groups * g, p=p, c=c, seed=seed, **kw)
    for key in ("tokens", "positions", "segment_ids"):
        batch[key][:, :p] = np.repeat(batch[key][::g, :p], g, axis=0)
    return batch


def test_a_shared_prompt_pass_gives_the_unshared_logprobs_and_gradients(params):
    batch = make_group_batch()
    args = tuple(batch[k] for k in ("tokens", "positions", "segment_ids", "completion_mask"))

    def total(p, group, chunk=None):
        logp = token_logprobs(CFG, p, *args, 0.8, chunk, group)
        return jnp.sum(logp * jnp.asarray(batch["advantages"])[:, None]), logp

    (_, lp_one), g_one = jax.jit(jax.value_and_grad(lambda p: total(p, 1), has_aux=True))(params)
    for group, chunk in ((4, None), (2, 3)):  # whole groups; and pairs within them, with a chunked head
        (_, lp), grads = jax.jit(jax.value_and_grad(lambda p: total(p, group, chunk), has_aux=True))(params)
        np.testing.assert_allclose(np.asarray(lp), np.asarray(lp_one), atol=1e-5, rtol=0)
        # Whole-model gradients (entries up to ~20 here, summed in another order): the 1e-4 model tolerance.
        assert_trees_close(grads, g_one, atol=1e-4, rtol=1e-4)
    assert np.any(np.asarray(lp_one) != 0)
    # The prompt really runs once per group: the shared pass's FLOPs are below the unshared pass's.
    flops = {
        group: jax.jit(lambda p: total(p, group)[0]).lower(params).compile().cost_analysis()["flops"]
        for group in (1, 4)
    }
    assert flops[4] < 0.8 * flops[1], flops


def test_micro_batches_keep_prompt_groups_together_when_they_can():
    # (rows, accum_steps, prompt_group) -> (rows dealt per unit, rows sharing a prompt within a micro-batch)
    cases = {
        (16, 1, 4): (1, 4),
        (16, 2, 4): (4, 4),
        (16, 4, 4): (4, 4),
        (24, 4, 4): (1, 1),
        (24, 4, 8): (1, 2),
        (24, 2, 8): (1, 4),
        (32, 4, 8): (8, 8),
        (16, 4, 1): (1, 1),
    }
    for (rows, accum, group), want in cases.items():
        assert micro_layout(rows, accum, group) == want, (rows, accum, group)
        batch = make_group_batch(groups=rows // group, g=group, p=4, c=2)
        unit, inner = want
        for key in ("tokens", "positions", "segment_ids"):
            x = batch[key]
            micro = np.asarray(_split(jnp.asarray(x), accum, unit)) if accum > 1 else x[None]
            np.testing.assert_array_equal(np.asarray(_unsplit(jnp.asarray(micro), unit)), x)
            for mb in micro:  # every run of `inner` rows of a micro-batch shares one prompt
                runs = mb[:, :4].reshape(-1, inner, 4)
                np.testing.assert_array_equal(runs, np.repeat(runs[:, :1], inner, axis=1))


# ------------------------------------------------------------------------------------------------ accumulation


@pytest.mark.slow
@pytest.mark.parametrize("mode", AGG_MODES)
def test_accumulation_over_4_micro_batches_equals_one_batch(params, mode):
    gcfg = grpo_cfg(loss_agg_mode=mode)
    mesh = sharding.single_device_mesh()
    one, four = make_step(mesh, gcfg, 1), make_step(mesh, gcfg, 4)
    batch = make_batch(b=16, seed=2)
    s1, m1 = one(one.init(jax.random.key(1), params), one.shard_batch(batch))
    s4, m4 = four(four.init(jax.random.key(1), params), four.shard_batch(batch))
    assert_metrics_close(m1, m4)
    assert_trees_close(s1.params, s4.params)
    assert float(m1["clip_fraction"]) > 0 and float(m1["kl"]) > 0  # the clipped and KL paths are exercised
    assert not np.allclose(host(s1.params)["lm_head"], np.asarray(params["lm_head"]))

    # And both equal the gradient of the whole batch's loss written directly with the GRPO math.
    def whole(p):
        logp = token_logprobs(
            CFG,
            p,
            batch["tokens"],
            batch["positions"],
            batch["segment_ids"],
            batch["completion_mask"],
            gcfg.temperature,
        )
        terms = grpo.grpo_loss_terms(
            logp, batch["old_logp"], batch["ref_logp"], batch["advantages"], batch["completion_mask"], gcfg
        )
        return grpo.finalize(terms)["loss"]

    loss, grads = jax.jit(jax.value_and_grad(whole))(params)
    np.testing.assert_allclose(float(m4["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(
        float(m4["grad_norm"]), float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))), rtol=1e-5
    )
    metrics, got = four.loss_and_grads(four.copy_params(params), four.shard_batch(batch))
    assert_trees_close(got, grads, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- sharding


@pytest.mark.slow
def test_grpo_steps_on_8_1_1_and_2_2_2_meshes_equal_one_device(params):
    # The sharded steps also share each group's prompt pass (rows of one prompt are dealt to a micro-batch
    # together); the one-device step runs every row on its own.
    gcfg = grpo_cfg()
    batch = make_group_batch(groups=4, g=4, p=8, c=8, seed=3, with_ref=False)
    results = {}
    for shape in ((1, 1, 1), (8, 1, 1), (2, 2, 2)):
        n = int(np.prod(shape))
        mesh = sharding.make_mesh(sharding.MeshConfig(*shape), devices=jax.devices()[:n])
        step = make_step(mesh, gcfg, accum_steps=2, logits_chunk=4, prompt_group=1 if n == 1 else 4)
        state = step.init(jax.random.key(0), params)
        ref = step.copy_params(state.params)  # the frozen reference: must survive the donated steps
        b = step.shard_batch(batch)
        b["ref_logp"] = step.ref_logprobs(ref, b)
        assert b["ref_logp"].sharding.is_equivalent_to(step.batch_sharding, 2)
        # A batch laid out another way (replicated, as a sampler's rules may leave it) is resharded first.
        np.testing.assert_array_equal(
            np.asarray(step.ref_logprobs(ref, jax.device_put(batch, sharding.replicated(mesh)))),
            np.asarray(b["ref_logp"]),
        )
        history = []
        for _ in range(2):
            state, m = step(state, b)
            history.append(host(m))
        after = step.ref_logprobs(ref, b)
        results[shape] = (host(state.params), history, np.asarray(b["ref_logp"]), np.asarray(after))
        if shape == (2, 2, 2):  # the params really are split over fsdp and tensor
            specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
            assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs), specs
    base_params, base_hist, base_ref, base_after = results[(1, 1, 1)]
    np.testing.assert_array_equal(base_after, base_ref)  # the reference did not move
    assert float(base_hist[1]["kl"]) > 0  # the actor did
    for shape in ((8, 1, 1), (2, 2, 2)):
        got_params, hist, ref_logp, _ = results[shape]
        np.testing.assert_allclose(ref_logp, base_ref, atol=1e-5, rtol=0)
        assert_trees_close(got_params, base_params)
        for m, m0 in zip(hist, base_hist):
            assert_metrics_close(m, m0)


# ------------------------------------------------------------------------------------------------------ sanity


def test_positive_advantage_raises_the_completions_logprob(params):
    gcfg = GRPOConfig(num_generations=2, beta=0.0, learning_rate=1e-3, max_completion_tokens=8)
    step = GRPOStep(CFG, sharding.single_device_mesh(), gcfg, gcfg.optimizer_config(10, warmup_steps=0))
    batch = make_batch(b=2, p=8, c=8, seed=4, with_old=False, with_ref=False)
    batch["completion_mask"][:] = True
    batch["segment_ids"][:, 8:] = 1
    batch["advantages"] = np.array([1.0, -1.0], np.float32)
    b = step.shard_batch(batch)
    state = step.init(jax.random.key(0), params)

    # First a batch with no completion token at all: zero loss and gradient, finite metrics, params unchanged.
    empty = {**batch, "completion_mask": np.zeros_like(batch["completion_mask"])}
    state, metrics = step(state, step.shard_batch(empty))
    assert float(metrics["loss"]) == 0 and float(metrics["grad_norm"]) == 0
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert_trees_close(host(state.params), params, atol=0, rtol=0)

    before = np.asarray(step.logprobs(state.params, b)).sum(axis=1)
    state, metrics = step(state, b)
    after = np.asarray(step.logprobs(state.params, b)).sum(axis=1)
    np.testing.assert_array_equal(np.asarray(step.logprobs(state.params, batch)).sum(axis=1), after)  # host arrays
    assert after[0] > before[0] + 1e-3, (before, after)
    assert after[1] < before[1] - 1e-3, (before, after)
    assert float(metrics["clip_fraction"]) == 0  # on-policy: every ratio is 1
    assert int(state.step) == 2


# ------------------------------------------------------------------------------------------------------ errors


def test_bad_batches_are_named():
    gcfg = grpo_cfg()
    batch = make_batch(b=4)
    check_batch(batch, gcfg, accum_steps=2)
    with pytest.raises(ValueError, match="GRPOConfig.beta"):
        check_batch({k: v for k, v in batch.items() if k != "ref_logp"}, gcfg)
    with pytest.raises(ValueError, match="GRPOConfig.num_iterations"):
        check_batch({k: v for k, v in batch.items() if k != "old_logp"}, gcfg)
    with pytest.raises(ValueError, match="accum_steps=3"):
        check_batch(batch, gcfg, accum_steps=3)
    with pytest.raises(ValueError, match=r"batch\['advantages'\]"):
        check_batch({**batch, "advantages": np.zeros((4, 1))}, gcfg)
    with pytest.raises(ValueError, match="completion_mask"):
        check_batch({**batch, "completion_mask": np.ones((4, 16), bool)}, gcfg)
    with pytest.raises(ValueError, match="missing.*advantages"):
        check_batch({k: v for k, v in batch.items() if k != "advantages"}, gcfg)
    with pytest.raises(ValueError, match="unknown.*rewards"):
        check_batch({**batch, "rewards": np.zeros(4)}, gcfg)
    with pytest.raises(ValueError, match="total_steps"):
        GRPOStep(CFG, sharding.single_device_mesh(), gcfg)
    with pytest.raises(ValueError, match="GRPOStep.logits_chunk"):
        GRPOStep(CFG, sharding.single_device_mesh(), gcfg, total_steps=10, logits_chunk=0)
    with pytest.raises(ValueError, match="GRPOStep.accum_steps"):
        GRPOStep(CFG, sharding.single_device_mesh(), gcfg, total_steps=10, accum_steps=0)
    with pytest.raises(ValueError, match="GRPOStep.prompt_group"):
        GRPOStep(CFG, sharding.single_device_mesh(), gcfg, total_steps=10, prompt_group=0)
    grouped = make_group_batch(groups=2, g=2, p=8, c=8)
    check_batch(grouped, gcfg, prompt_group=2)
    with pytest.raises(ValueError, match="whole groups of GRPOStep.prompt_group=3"):
        check_batch(grouped, gcfg, prompt_group=3)
    with pytest.raises(ValueError, match=r"prompt_group=4: rows 0..3 differ in batch\['tokens'\]\[:, :8\]"):
        check_batch(grouped, gcfg, prompt_group=4)
