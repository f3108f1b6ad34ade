"""Hugging Face ``Olmo2ForCausalLM`` and ``Qwen3ForCausalLM`` directories <-> synpro_jax (config, params).

Reads and writes config.json plus safetensors (one file, or shards with ``model.safetensors.index.json``) with
NumPy only: no torch, no network. A saved directory loads in ``transformers.AutoModelForCausalLM`` and in vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import math
import os
import tempfile
from typing import Any

from etils.epath import Path
import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from synpro_jax import atomic
from synpro_jax.errors import ConfigError
from synpro_jax.models import abstract_params
from synpro_jax.models.config import ModelConfig

SUPPORTED_ARCHITECTURE = "Olmo2ForCausalLM"
QWEN3_ARCHITECTURE = "Qwen3ForCausalLM"
# ModelConfig.architecture -> the HF class and model_type that hold it.
HF_CLASSES = {"olmo2": (SUPPORTED_ARCHITECTURE, "olmo2"), "qwen3": (QWEN3_ARCHITECTURE, "qwen3")}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ConfigError):
    """A checkpoint directory that synpro_jax cannot read as an OLMo-2 or Qwen3 model."""


# --- config ------------------------------------------------------------------------------------------------------


def _rope_theta(hf: dict, where: str) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise CheckpointError(f"{where}: rope type {rope_type!r} is not supported (only default RoPE)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def _architecture(hf: dict, where: str) -> str:
    archs = hf.get("architectures") or []
    for arch, (hf_class, model_type) in HF_CLASSES.items():
        if hf_class in archs or hf.get("model_type") == model_type:
            return arch
    known = " or ".join(f"{c} (model_type {t!r})" for c, t in HF_CLASSES.values())
    raise CheckpointError(
        f"{where}: architectures={archs} model_type={hf.get('model_type')!r}; synpro_jax reads {known} only"
    )


def _qwen3_fields(hf: dict, where: str) -> dict:
    """The ModelConfig fields a Qwen3 config.json sets beyond the shared ones; refuses what the model lacks."""
    if hf.get("attention_bias"):
        raise CheckpointError(
            f"{where}: attention_bias=true is not supported (synpro_jax's Qwen3 has no q/k/v/o biases, as no "
            "released Qwen3 does)"
        )
    if hf.get("use_sliding_window"):
        raise CheckpointError(
            f"{where}: use_sliding_window=true is not supported (synpro_jax's Qwen3 attends over the whole context)"
        )
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise CheckpointError(f"{where}: layer_types={sorted(layer_types)}; only 'full_attention' layers are supported")
    scaling = hf.get("rope_scaling")
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) != "default":
        raise CheckpointError(f"{where}: rope_scaling={scaling} is not supported (only rope_scaling: null)")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(
            f"{where}: rope_parameters={rope} is not supported (only rope_type 'default', plain RoPE)"
        )
    return {
        "architecture": "qwen3",
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "head_dim": int(hf.get("head_dim") or 128),  # Qwen3Config's default, whatever hidden_size / heads is
        "max_seq_len": int(hf.get("max_position_embeddings", 32768)),
    }


def config_from_hf(hf: dict, where: str = "config.json", name: str = "hf") -> ModelConfig:
    arch = _architecture(hf, where)
    extra = _qwen3_fields(hf, where) if arch == "qwen3" else {}
    if hf.get("attention_bias"):
        raise CheckpointError(f"{where}: attention_bias=true is not supported (OLMo-2 has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act={hf['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
    try:
        fields = dict(
            name=name,
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            head_dim=int(hf["head_dim"]) if hf.get("head_dim") else None,
            mlp_dim=int(hf["intermediate_size"]),
            rope_theta=_rope_theta(hf, where),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(hf.get("max_position_embeddings", 4096)),
        )
        return ModelConfig(**{**fields, **extra})
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e.args[0]!r}") from None
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32", extra: dict | None = None) -> dict:
    hf_class, model_type = HF_CLASSES[cfg.architecture]
    hf = {
        "architectures": [hf_class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers >= 5 reads rope_parameters; older readers (and vLLM) read rope_theta.
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }
    if cfg.architecture == "qwen3":
        hf.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.num_layers})
    elif cfg.vocab_size <= 50279:  # transformers' Olmo2 default eos (50279) would point outside a small vocabulary
        hf.update({"eos_token_id": None, "pad_token_id": None})
    hf.update(extra or {})
    return hf


# --- tensor name mapping -------------------------------------------------------------------------------------------
# Each entry: HF name (with {i} for the layer), path in our params, HF array -> ours, ours -> HF array.


def _mapping(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], Callable, Callable]]:
    d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    t = lambda w: w.T  # noqa: E731  (torch Linear stores [out, in])
    ident = lambda w: w  # noqa: E731
    head = [] if cfg.tie_embeddings else [("lm_head.weight", ("lm_head",), t, t)]  # tied: the embedding serves
    if cfg.architecture == "qwen3":  # q/k norms of one [head_dim] scale each; norms on the sublayer inputs
        norms = [
            ("model.layers.{i}.self_attn.q_norm.weight", ("layers", "attn", "q_norm", "scale"), ident, ident),
            ("model.layers.{i}.self_attn.k_norm.weight", ("layers", "attn", "k_norm", "scale"), ident, ident),
            ("model.layers.{i}.input_layernorm.weight", ("layers", "pre_attn_norm", "scale"), ident, ident),
            ("model.layers.{i}.post_attention_layernorm.weight", ("layers", "pre_mlp_norm", "scale"), ident, ident),
        ]
    else:
        norms = _olmo2_norms(h, kv, hd, ident)
    return [
        ("model.embed_tokens.weight", ("embedding",), ident, ident),
        ("model.norm.weight", ("final_norm", "scale"), ident, ident),
        *head,
        (
            "model.layers.{i}.self_attn.q_proj.weight",
            ("layers", "attn", "q_proj", "kernel"),
            lambda w: w.T.reshape(d, h, hd),
            lambda w: w.reshape(d, h * hd).T,
        ),
        (
            "model.layers.{i}.self_attn.k_proj.weight",
            ("layers", "attn", "k_proj", "kernel"),
            lambda w: w.T.reshape(d, kv, hd),
            lambda w: w.reshape(d, kv * hd).T,
        ),
        (
            "model.layers.{i}.self_attn.v_proj.weight",
            ("layers", "attn", "v_proj", "kernel"),
            lambda w: w.T.reshape(d, kv, hd),
            lambda w: w.reshape(d, kv * hd).T,
        ),
        (
            "model.layers.{i}.self_attn.o_proj.weight",
            ("layers", "attn", "o_proj", "kernel"),
            lambda w: w.T.reshape(h, hd, d),
            lambda w: w.reshape(h * hd, d).T,
        ),
        *norms,
        ("model.layers.{i}.mlp.gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), t, t),
        ("model.layers.{i}.mlp.up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), t, t),
        ("model.layers.{i}.mlp.down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), t, t),
    ]


def _olmo2_norms(h: int, kv: int, hd: int, ident: Callable) -> list:
    """OLMo-2's q/k norms (over the full projected width) and its norms on the sublayer outputs."""
    return [
        (
            "model.layers.{i}.self_attn.q_norm.weight",
            ("layers", "attn", "q_norm", "scale"),
            lambda w: w.reshape(h, hd),
            lambda w: w.reshape(h * hd),
        ),
        (
            "model.layers.{i}.self_attn.k_norm.weight",
            ("layers", "attn", "k_norm", "scale"),
            lambda w: w.reshape(kv, hd),
            lambda w: w.reshape(kv * hd),
        ),
        ("model.layers.{i}.post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale"), ident, ident),
        ("model.layers.{i}.post_feedforward_layernorm.weight", ("layers", "post_mlp_norm", "scale"), ident, ident),
    ]


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _expected_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


# --- load ----------------------------------------------------------------------------------------------------------


def _tensor_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        files = {name: path / fname for name, fname in weight_map.items()}
        for f in set(files.values()):
            if not f.exists():
                raise CheckpointError(f"{index} names {f.name}, which is missing from {path}")
        return files
    single = path / SINGLE_FILE
    if not single.exists():
        raise CheckpointError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found (only safetensors is read)")
    with safe_open(str(single), framework="numpy") as fh:
        return {name: single for name in fh.keys()}


def _read_hf_config(path: Path) -> dict:
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def read_config(path: str | os.PathLike, name: str | None = None) -> ModelConfig:
    """The ModelConfig of an HF Olmo2 or Qwen3 directory, without reading its weights."""
    path = Path(path)
    return config_from_hf(_read_hf_config(path), str(path / "config.json"), name=name or path.name)


def load(path: str | os.PathLike, name: str | None = None) -> tuple[ModelConfig, dict]:
    """Read an HF Olmo2ForCausalLM or Qwen3ForCausalLM directory into (ModelConfig, float32 NumPy params).

    Place the params on a mesh with ``jax.device_put(params, models.param_shardings(cfg, mesh))``. A directory
    on an object store (``gs://``) is copied to a local temp folder first (safetensors maps local files).
    """
    path = Path(path)
    if atomic.is_remote(path):
        with tempfile.TemporaryDirectory(prefix="synpro_hf_") as local:
            _read_hf_config(path)  # a clear error before any copy
            for f in path.iterdir():
                if f.is_file() and (f.suffix in (".json", ".safetensors")):
                    (Path(local) / f.name).write_bytes(f.read_bytes())
            cfg, params = load(local, name=name or path.name)
            return cfg, params
    hf = _read_hf_config(path)
    cfg = config_from_hf(hf, str(path / "config.json"), name=name or path.name)
    files = _tensor_files(path)
    expected = _expected_shapes(cfg)

    tied = bool(hf.get("tie_word_embeddings")) and "lm_head.weight" not in files
    handles: dict[Path, Any] = {}
    params: dict = {}
    used: set[str] = set()
    try:

        def read(hf_name: str) -> np.ndarray:
            if hf_name not in files:
                raise CheckpointError(f"{path}: tensor {hf_name!r} is missing")
            f = files[hf_name]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="numpy").__enter__()
            used.add(hf_name)
            return np.asarray(handles[f].get_tensor(hf_name)).astype(np.float32)

        for hf_name, ours, to_ours, _ in _mapping(cfg):
            if hf_name == "lm_head.weight" and tied:
                hf_name = "model.embed_tokens.weight"  # tied checkpoints store the head once
            if "{i}" in hf_name:
                value = np.stack([to_ours(read(hf_name.format(i=i))) for i in range(cfg.num_layers)])
            else:
                value = to_ours(read(hf_name))
            want = expected[ours]
            if value.shape != want:
                raise CheckpointError(
                    f"{path}: {hf_name} gives shape {value.shape} for {'/'.join(ours)}, but config.json implies {want}"
                )
            _set(params, ours, value)
        # A tied head is the embedding (transformers ties it whatever lm_head.weight holds); one stored anyway
        # must agree, or the directory is not the model its config describes.
        if cfg.tie_embeddings and "lm_head.weight" in files:
            if not np.array_equal(read("lm_head.weight"), params["embedding"]):
                raise CheckpointError(
                    f"{path}: tie_word_embeddings=true, but lm_head.weight differs from model.embed_tokens.weight"
                )
    except ValueError as e:  # a reshape that does not fit the config
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: a tensor's shape does not match config.json ({e})") from None
    finally:
        for fh in handles.values():
            fh.__exit__(None, None, None)
    unexpected = sorted(n for n in set(files) - used if "rotary_emb" not in n)
    if unexpected:
        hf_class = HF_CLASSES[cfg.architecture][0]
        raise CheckpointError(f"{path}: unexpected tensors not part of a {hf_class} model: {unexpected[:8]}")
    return cfg, params


# --- save ----------------------------------------------------------------------------------------------------------

_SAVE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def save(
    cfg: ModelConfig,
    params: Any,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    max_shard_bytes: int = 5 * 1024**3,
    overwrite: bool = False,
    extra_config: dict | None = None,
) -> Path:
    """Write an HF Olmo2ForCausalLM (or Qwen3ForCausalLM, by ``cfg.architecture``) directory, whole or not at
    all (:func:`synpro_jax.atomic.publish_dir`; on an object store ``config.json`` goes up last). ``params``
    must be host values (gather global arrays with :func:`synpro_jax.sharding.to_host` first, on every process).

    An existing non-empty ``out_dir`` is an error unless ``overwrite=True``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    return atomic.publish_dir(
        out,
        lambda tmp: write_dir(
            cfg, params, tmp, dtype=dtype, max_shard_bytes=max_shard_bytes, extra_config=extra_config
        ),
        last=("config.json",),
    )


def write_dir(
    cfg: ModelConfig,
    params: Any,
    tmp: Path,
    *,
    dtype: str = "float32",
    max_shard_bytes: int = 5 * 1024**3,
    extra_config: dict | None = None,
) -> None:
    """The HF directory's files (safetensors shards, their index, config.json) into the local folder ``tmp``."""
    if dtype not in _SAVE_DTYPES:
        raise ValueError(f"save(dtype={dtype!r}): choose one of {sorted(_SAVE_DTYPES)}")
    np_dtype = _SAVE_DTYPES[dtype]
    tensors: dict[str, np.ndarray] = {}
    for hf_name, ours, _, to_hf in _mapping(cfg):
        leaf = _get(params, ours)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            raise ValueError(
                f"hf.save: parameter {ours} is a global array spread over hosts; gather it with "
                "synpro_jax.sharding.to_host on every process first"
            )
        value = np.asarray(leaf, dtype=np.float32)
        names = [hf_name.format(i=i) for i in range(cfg.num_layers)] if "{i}" in hf_name else [hf_name]
        values = list(value) if "{i}" in hf_name else [value]
        for n, v in zip(names, values):
            tensors[n] = np.ascontiguousarray(to_hf(v)).astype(np_dtype)

    # Greedy sharding in a stable order.
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for n, v in tensors.items():
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][n] = v
        size += v.nbytes

    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.fspath(tmp / SINGLE_FILE), metadata=meta)
    else:
        width = max(5, int(math.log10(len(shards))) + 1)
        weight_map = {}
        for k, shard in enumerate(shards, start=1):
            fname = f"model-{k:0{width}d}-of-{len(shards):0{width}d}.safetensors"
            save_file(shard, os.fspath(tmp / fname), metadata=meta)
            weight_map.update({n: fname for n in shard})
        total = sum(v.nbytes for v in tensors.values())
        (tmp / INDEX_FILE).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype, extra_config), indent=2))
