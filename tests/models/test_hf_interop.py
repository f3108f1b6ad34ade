"""Parity with Hugging Face transformers' Olmo2ForCausalLM: load, forward, save, reload."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from synpro_jax import models
from synpro_jax.models import hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_peer import make_hf_model  # noqa: E402

SHAPES = {
    "mha": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
    ),
    "gqa": dict(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=96,
    ),
    "mqa_wide_head": dict(
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=80,
    ),
}


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(params=sorted(SHAPES))
def hf_dir(request, tmp_path):
    model = make_hf_model(sum(map(ord, request.param)), **SHAPES[request.param])
    path = tmp_path / request.param
    model.save_pretrained(path)
    return model, path


def tokens_for(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(3, 17))


def test_load_matches_transformers_logits(hf_dir):
    model, path = hf_dir
    cfg, params = hf.load(path)
    assert cfg.num_kv_heads == model.config.num_key_value_heads
    tokens = tokens_for(cfg.vocab_size)
    ours = np.asarray(models.forward(cfg, params, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_save_then_transformers_reload(hf_dir, tmp_path):
    model, path = hf_dir
    cfg, params = hf.load(path)
    out = hf.save(cfg, params, tmp_path / "exported")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = tokens_for(cfg.vocab_size, seed=1)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), hf_logits(model, tokens), atol=1e-5, rtol=0)
    ours = np.asarray(models.forward(cfg, params, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(reloaded, tokens), atol=1e-4, rtol=0)


def test_sharded_bf16_save_round_trips(tmp_path):
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, __import__("jax").random.key(3))
    out = hf.save(cfg, params, tmp_path / "sharded", dtype="bfloat16", max_shard_bytes=40_000)
    index = json.loads((out / hf.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    cfg2, params2 = hf.load(out)
    assert cfg2.replace(name=cfg.name) == cfg.replace(max_seq_len=cfg2.max_seq_len)
    tokens = tokens_for(cfg.vocab_size)
    ours = np.asarray(models.forward(cfg2, params2, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_save_refuses_to_overwrite(tmp_path):
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, __import__("jax").random.key(0))
    out = hf.save(cfg, params, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hf.save(cfg, params, out)
    hf.save(cfg, params, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_unknown_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(hf.CheckpointError, match="LlamaForCausalLM.*Olmo2ForCausalLM"):
        hf.load(tmp_path)


def test_missing_directory_and_bad_json(tmp_path):
    with pytest.raises(hf.CheckpointError, match="no config.json"):
        hf.load(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{\n  'architectures': oops\n}")
    with pytest.raises(hf.CheckpointError, match="line 2"):
        hf.load(tmp_path)


def test_shape_mismatch_names_the_tensor(hf_dir):
    _, path = hf_dir
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] += 8
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointError, match="gate_proj"):
        hf.load(path)


def test_missing_tensor_is_reported(tmp_path):
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, __import__("jax").random.key(0))
    out = hf.save(cfg, params, tmp_path / "m")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(out / hf.SINGLE_FILE))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(out / hf.SINGLE_FILE))
    with pytest.raises(hf.CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        hf.load(out)
