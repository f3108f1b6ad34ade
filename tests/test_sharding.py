"""Mesh construction, the logical-axis rules, and sharded results equal to single-device ones."""

import jax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.train import OptimizerConfig, TrainStep, next_token_batch


def test_mesh_infers_minus_one_and_uses_auto_axes():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    # JAX >= 0.7 makes Explicit meshes by default; synpro_jax asks for Auto on every axis.
    assert jax.make_mesh((8,), ("x",)).axis_types == (AxisType.Explicit,)
    assert mesh.axis_types == (AxisType.Auto,) * 3


@pytest.mark.parametrize(
    "cfg, match",
    [
        (sharding.MeshConfig(3, 1, 1), "data\\*fsdp\\*tensor = 3 but 8 devices"),
        (sharding.MeshConfig(-1, 3, 1), "multiply to 3, which does not divide the 8"),
    ],
)
def test_mesh_wrong_product_is_a_clear_error(cfg, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(cfg)


def test_mesh_config_validation():
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.MeshConfig(-1, -1, 1)
    with pytest.raises(ValueError, match="MeshConfig.tensor=0"):
        sharding.MeshConfig(1, 1, 0)


def test_rules_resolve_conflicts_and_divisibility():
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    # activations: batch takes data and fsdp, so embed gets nothing
    assert sharding.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"))
    assert sharding.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    # 3 kv heads cannot split 2 ways: replicated along that dim instead of an error
    assert sharding.logical_to_spec(("embed", "kv_heads"), shape=(64, 3), mesh=mesh) == P("fsdp")
    assert sharding.logical_to_spec(("embed", "kv_heads"), shape=(64, 4), mesh=mesh) == P("fsdp", "tensor")
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("nonsense",))
    assert sharding.logical_to_spec(("vocab", "embed"), sharding.SAMPLING_RULES) == P("tensor")


def test_an_axis_that_does_not_divide_a_parameter_warns_once_naming_it(caplog):
    cfg = models.get_preset("tiny").replace(num_kv_heads=2)  # 2 kv heads on a 4-way tensor axis
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 1, 4))
    with caplog.at_level("WARNING", logger="synpro_jax.sharding"):
        models.param_shardings(cfg, mesh)
        models.param_shardings(cfg, mesh)
    warned = [r.getMessage() for r in caplog.records if "not divisible" in r.getMessage()]
    assert len(warned) == 3, warned  # k_proj, v_proj and k_norm, once each
    assert any("['layers']['attn']['k_proj']['kernel']" in m and "mesh axis 'tensor'" in m for m in warned)
    assert all("kv_heads" in m for m in warned)


def test_param_shardings_follow_the_rules():
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    params = models.init_params(cfg, jax.random.key(0), mesh)
    specs = {k: s for k, s in sharding.describe(jax.tree.map(lambda x: x.sharding, params)).items()}
    assert specs["['embedding']"] == str(P("tensor", "fsdp"))
    assert specs["['lm_head']"] == str(P("fsdp", "tensor"))
    assert specs["['layers']['attn']['q_proj']['kernel']"] == str(P(None, "fsdp", "tensor"))
    assert specs["['layers']['attn']['o_proj']['kernel']"] == str(P(None, "tensor", None, "fsdp"))
    assert specs["['layers']['mlp']['down_proj']['kernel']"] == str(P(None, "tensor", "fsdp"))
    assert specs["['layers']['post_attn_norm']['scale']"] == str(P(None, "fsdp"))
    # every leaf is exactly what logical_to_spec gives for its logical names
    axes = models.param_logical_axes(cfg)
    flat_axes = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0]
    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, names in flat_axes:
        leaf = flat_params[path]
        assert leaf.sharding.spec == sharding.logical_to_spec(names, shape=leaf.shape, mesh=mesh), path


@pytest.fixture(scope="module")
def single_device_reference():
    cfg = models.get_preset("tiny")
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(8, 33))
    batch = next_token_batch(tokens)
    params = models.init_params(cfg, jax.random.key(1))
    step = TrainStep(cfg, sharding.single_device_mesh(), z_loss=1e-4)
    sums, grads = step.loss_and_grads(params, step.shard_batch(batch))
    return cfg, batch, jax.device_get(params), float(sums.loss(1e-4)), jax.device_get(grads)


@pytest.mark.parametrize(
    "shape, memory",
    [
        ((8, 1, 1), {}),
        pytest.param((2, 4, 1), {}, marks=pytest.mark.slow),  # the fast tier keeps (8,1,1), (2,2,2) and the knobs
        ((2, 2, 2), {}),
        pytest.param((1, 1, 8), {}, marks=pytest.mark.slow),
        ((2, 2, 2), dict(loss_chunk=5, attention="xla", remat="dots_saveable")),  # the memory-saving paths
    ],
)
def test_sharded_loss_and_grads_equal_single_device(shape, memory, single_device_reference):
    cfg, batch, params, ref_loss, ref_grads = single_device_reference
    cfg = cfg.replace(**memory)
    mesh = sharding.make_mesh(sharding.MeshConfig(*shape))
    step = TrainStep(cfg, mesh, z_loss=1e-4)
    sharded_params = jax.device_put(params, step.param_shardings)
    sums, grads = step.loss_and_grads(sharded_params, step.shard_batch(batch))
    assert abs(float(sums.loss(1e-4)) - ref_loss) < 1e-5
    for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), r, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
    assert grads["lm_head"].sharding.spec == step.param_shardings["lm_head"].spec


def test_full_step_on_mesh_matches_single_device(single_device_reference):
    cfg, batch, params, _, _ = single_device_reference
    opt = OptimizerConfig(learning_rate=1e-3, warmup_steps=0)
    results = []
    for mesh in (sharding.single_device_mesh(), sharding.make_mesh(sharding.MeshConfig(2, 2, 2))):
        step = TrainStep(cfg, mesh, opt, z_loss=1e-4)
        state = step.init(jax.random.key(0), params=params)
        state, metrics = step(state, step.shard_batch(batch))
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    (m1, p1), (m2, p2) = results
    for key in ("loss", "grad_norm", "z_loss"):  # z_loss is ~30 here: compare it relatively
        assert abs(m1[key] - m2[key]) <= 1e-5 * max(1.0, abs(m1[key])), key
    np.testing.assert_allclose(
        p1["layers"]["mlp"]["up_proj"]["kernel"], p2["layers"]["mlp"]["up_proj"]["kernel"], atol=1e-5
    )


def test_a_host_mesh_takes_the_fsdp_and_tensor_axes_that_fit_on_the_host(monkeypatch):
    """Bulk jobs run one replica per host: an fsdp axis wider than the host shards over all its devices."""
    wide = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=8))
    split = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
    monkeypatch.setattr(jax, "local_devices", lambda: jax.devices()[:4])  # a host with 4 of the 8 devices
    assert dict(sharding.host_mesh(wide).shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert dict(sharding.host_mesh(split).shape) == {"data": 1, "fsdp": 2, "tensor": 2}
    assert list(sharding.host_mesh(wide).devices.flat) == jax.devices()[:4]
