"""Qwen3 (``architecture="qwen3"``) against Hugging Face transformers' Qwen3ForCausalLM: load, forward, save,
reload, greedy decoding; and its config, presets and shardings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.generation import sample
from synpro_jax.models import ModelConfig, hf
from synpro_jax.train import TrainStep, next_token_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_peer import hf_greedy, make_qwen3_model  # noqa: E402

# GQA everywhere, and head_dim != hidden_size / num_attention_heads (Qwen3 sets it explicitly).
SHAPES = {
    "tied": dict(
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=80,
        tie_word_embeddings=True,
    ),
    "untied": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=96,
        tie_word_embeddings=False,
    ),
}

# Qwen/Qwen3-0.6B's config.json (the fields that describe the model).
QWEN3_0_6B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


def hf_logits(model, tokens: np.ndarray, attention_mask=None, position_ids=None) -> np.ndarray:
    kwargs = {}
    if attention_mask is not None:
        kwargs = dict(attention_mask=torch.as_tensor(attention_mask), position_ids=torch.as_tensor(position_ids))
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long), **kwargs).logits.float().numpy()


def tokens_for(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(3, 17))


@pytest.fixture(scope="module", params=sorted(SHAPES))
def hf_dir(request, tmp_path_factory):
    model = make_qwen3_model(sum(map(ord, request.param)), **SHAPES[request.param])
    path = tmp_path_factory.mktemp("qwen3") / request.param
    model.save_pretrained(path)
    return model, path


def test_load_matches_transformers_logits(hf_dir):
    model, path = hf_dir
    cfg, params = hf.load(path)
    assert cfg.architecture == "qwen3" and cfg.tie_embeddings == model.config.tie_word_embeddings
    assert (cfg.num_kv_heads, cfg.head_dim) == (model.config.num_key_value_heads, model.config.head_dim)
    assert cfg.head_dim != cfg.d_model // cfg.num_heads
    assert ("lm_head" in params) != cfg.tie_embeddings
    tokens = tokens_for(cfg.vocab_size)
    ours = np.asarray(models.forward(cfg, params, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_left_padded_batch_matches_transformers(hf_dir):
    """Left padding as segment 0 with positions counted from each row's first real token, against HF's
    attention mask and position ids: the real tokens' logits agree."""
    model, path = hf_dir
    cfg, params = hf.load(path)
    tokens = tokens_for(cfg.vocab_size, seed=2)
    lengths = np.array([17, 9, 3])
    mask = (np.arange(17)[None, :] >= 17 - lengths[:, None]).astype(np.int64)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    tokens = np.where(mask == 1, tokens, 0)
    ours = np.asarray(
        models.forward(
            cfg,
            params,
            jnp.asarray(tokens),
            positions=jnp.asarray(positions),
            segment_ids=jnp.asarray(mask, jnp.int32),
        )
    )
    ref = hf_logits(model, tokens, mask, positions)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


def test_save_then_transformers_reload(hf_dir, tmp_path):
    model, path = hf_dir
    cfg, params = hf.load(path)
    out = hf.save(cfg, params, tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert config["tie_word_embeddings"] == cfg.tie_embeddings
    from safetensors import safe_open

    with safe_open(str(out / hf.SINGLE_FILE), framework="numpy") as fh:
        assert ("lm_head.weight" in fh.keys()) != cfg.tie_embeddings
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == "Qwen3ForCausalLM"
    tokens = tokens_for(cfg.vocab_size, seed=1)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), hf_logits(model, tokens), atol=1e-5, rtol=0)
    ours = np.asarray(models.forward(cfg, params, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(reloaded, tokens), atol=1e-4, rtol=0)
    cfg2, params2 = hf.load(out)
    assert cfg2.replace(name=cfg.name) == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_our_random_qwen3_saves_for_transformers(tmp_path):
    """Params made here (not read from HF) export to a directory transformers runs with the same logits."""
    cfg = models.get_preset("qwen3_tiny")
    params = jax.device_get(models.init_params(cfg, jax.random.key(3)))
    params = jax.tree.map(lambda x: x + 0.1 * np.random.default_rng(x.size).normal(size=x.shape), params)
    out = hf.save(cfg, params, tmp_path / "ours", dtype="bfloat16", max_shard_bytes=40_000)
    assert len(set(json.loads((out / hf.INDEX_FILE).read_text())["weight_map"].values())) > 1
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    cfg2, params2 = hf.load(out)  # the bf16-rounded weights
    assert cfg2.replace(name=cfg.name) == cfg.replace(max_seq_len=cfg2.max_seq_len)
    tokens = tokens_for(cfg.vocab_size)
    ours = np.asarray(models.forward(cfg2, params2, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_tied_head_stored_twice_must_agree(tmp_path):
    cfg = models.get_preset("qwen3_tiny")
    params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    out = hf.save(cfg, params, tmp_path / "m")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(out / hf.SINGLE_FILE))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(out / hf.SINGLE_FILE))
    _, loaded = hf.load(out)  # the same table twice: fine
    assert "lm_head" not in loaded
    tensors["lm_head.weight"][0, 0] += 1.0
    save_file(tensors, str(out / hf.SINGLE_FILE))
    with pytest.raises(hf.CheckpointError, match="lm_head.weight differs from model.embed_tokens.weight"):
        hf.load(out)


def test_greedy_sample_matches_transformers_generate(hf_dir):
    """The KV-cached sampler (prefill, shared-prefix decode) against HF generate, greedy, left-padded prompts."""
    model, path = hf_dir
    cfg, params = hf.load(path)
    prompts = [[5, 9, 11], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [50], [20, 21, 22, 23, 24]]
    hf_tokens, hf_logp = hf_greedy(model, prompts, 12)
    out = sample(cfg, params, prompts, max_new_tokens=12)
    np.testing.assert_array_equal(out.tokens, hf_tokens)
    np.testing.assert_allclose(out.logprobs, hf_logp, atol=1e-4, rtol=0)


def test_kv_cache_and_chunked_loss_match_full_forward():
    cfg = models.get_preset("qwen3_tiny")
    params = models.init_params(cfg, jax.random.key(4))
    tokens = jax.random.randint(jax.random.key(5), (2, 12), 0, cfg.vocab_size)
    full = np.asarray(models.forward(cfg, params, tokens))
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    cache = models.init_cache(cfg, jnp.ones((2, 16), jnp.int32))
    split = models.split_layers(params)
    for start, stop in ((0, 5), (5, 6), (6, 12)):
        logits, cache = models.forward_cached(
            cfg, split, tokens[:, start:stop], cache, start, positions=positions[:, start:stop]
        )
        np.testing.assert_allclose(np.asarray(logits), full[:, stop - 1], atol=1e-5, rtol=0)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    dense = models.forward_loss_sums(cfg, params, inputs, targets)
    chunked = models.forward_loss_sums(cfg.replace(loss_chunk=4), params, inputs, targets)
    np.testing.assert_allclose(float(chunked.nll), float(dense.nll), rtol=1e-5)


def test_params_shard_on_an_8_device_mesh_and_train_like_one_device():
    cfg = models.get_preset("qwen3_tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    params = models.init_params(cfg, jax.random.key(0), mesh)
    assert "lm_head" not in params
    axes = models.param_logical_axes(cfg)
    flat_axes = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0]
    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    assert len(flat_axes) == len(flat_params)
    for path, names in flat_axes:
        leaf = flat_params[path]
        assert len(names) == leaf.ndim, path
        assert leaf.sharding.spec == sharding.logical_to_spec(names, shape=leaf.shape, mesh=mesh), path
    assert axes["layers"]["attn"]["q_norm"]["scale"] == ("layers", "head_dim")

    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(8, 17))
    batch = next_token_batch(tokens)
    host = jax.device_get(params)
    results = []
    for m in (sharding.single_device_mesh(), mesh):
        step = TrainStep(cfg, m, z_loss=1e-4)
        sums, grads = step.loss_and_grads(jax.device_put(host, step.param_shardings), step.shard_batch(batch))
        results.append((float(sums.loss(1e-4)), jax.device_get(grads)))
    (loss1, g1), (loss8, g8) = results
    assert abs(loss1 - loss8) < 1e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), g8, g1)


def test_qwen3_0_6b_preset_is_the_released_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_0_6B_CONFIG))
    cfg = hf.read_config(tmp_path)
    assert cfg.replace(name="qwen3_0_6b") == models.get_preset("qwen3_0_6b")
    assert 590e6 < cfg.num_params() < 600e6  # "0.6B", 0.44B of it outside the embedding
    assert 435e6 < cfg.num_params() - cfg.vocab_size * cfg.d_model < 445e6
    hf_cfg = transformers.Qwen3Config(**hf.config_to_hf(cfg))
    for key in ("hidden_size", "num_hidden_layers", "head_dim", "num_key_value_heads", "tie_word_embeddings"):
        assert getattr(hf_cfg, key) == QWEN3_0_6B_CONFIG[key], key


def test_param_counts_match_the_tree():
    for name in ("qwen3_tiny", "qwen3_0_6b"):
        cfg = models.get_preset(name)
        for c in (cfg, cfg.replace(tie_embeddings=False)):
            assert sum(x.size for x in jax.tree.leaves(models.abstract_params(c))) == c.num_params(), c
    assert "qwen3, tied embeddings" in models.get_preset("qwen3_0_6b").describe()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(attention_bias=True), "attention_bias=true is not supported"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling=.*yarn.* is not supported"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0}), "rope_parameters=.*linear.* is not"),
        (dict(use_sliding_window=True, sliding_window=4096), "use_sliding_window=true is not supported"),
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
        (dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2"), "Qwen2ForCausalLM.*Qwen3ForCausalLM"),
    ],
)
def test_unsupported_qwen3_configs_name_the_key(tmp_path, change, match):
    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_0_6B_CONFIG, **change}))
    with pytest.raises(hf.CheckpointError, match=match):
        hf.read_config(tmp_path)


def test_config_fields_are_validated_and_recorded_only_off_default():
    base = dict(vocab_size=32, d_model=64, num_layers=1, num_heads=8, mlp_dim=64)
    with pytest.raises(ValueError, match="ModelConfig.architecture='llama'"):
        ModelConfig(**base, architecture="llama")
    with pytest.raises(ValueError, match="ModelConfig.tie_embeddings=1"):
        ModelConfig(**base, tie_embeddings=1)
    olmo = ModelConfig(**base)
    assert "architecture" not in olmo.settings() and "tie_embeddings" not in olmo.settings()
    assert models.get_preset("qwen3_tiny").settings()["architecture"] == "qwen3"
