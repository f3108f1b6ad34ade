"""Which model and vocabulary a directory holds: the one rule every job uses to open a model it did not train.

A source is an HF OLMo-2 or Qwen3 directory (``config.json`` and safetensors) or a synpro run or checkpoint
directory.

- The model: the one given (a :class:`ModelConfig`, or a preset name) when there is one, since it may carry
  compute settings (dtype, remat, attention kernel) that a ``config.json`` does not; for an HF directory its
  shapes must then agree with ``config.json``. Without one, an HF directory's ``config.json`` describes it; a
  synpro run holds no model description, so one is required.
- ``dtype`` overrides the compute dtype either way.
- The vocabulary: the one named, else the directory's ``tokenizer.json`` or ``tokenizer.model``. It must fit the
  model's embedding.

``synpro grpo``, ``synpro synthesize``, ``synpro eval`` and ``synpro serve`` all open their models here; the
messages name each job's own knobs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from etils.epath import Path

from synpro_jax.data.vocab import find_vocabulary, load_vocabulary
from synpro_jax.errors import ConfigError
from synpro_jax.models import get_preset, hf
from synpro_jax.models.config import ModelConfig
from synpro_jax.train.params_io import is_hf_dir

__all__ = ["ModelSource", "Knobs", "open_source", "stop_token_ids"]

_SHAPES = (
    "architecture",
    "tie_embeddings",
    "d_model",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "vocab_size",
)


@dataclasses.dataclass(frozen=True)
class Knobs:
    """How a job names its settings in error messages (``synpro.grpo.generator`` or ``--checkpoint``)."""

    source: str
    model: str
    vocabulary: str


@dataclasses.dataclass(frozen=True)
class ModelSource:
    path: str
    config: ModelConfig
    vocab: Any  # a data.vocab vocabulary
    vocabulary: str  # the vocabulary's spec as named or found (a file path)


def _model(path: Path, model: ModelConfig | str | None, knobs: Knobs) -> ModelConfig:
    if isinstance(model, str):
        model = get_preset(model)
    if not is_hf_dir(path):
        if model is None:
            raise ConfigError(f"{knobs.source}={path}: not an HF directory (no config.json), so set {knobs.model}")
        return model
    if model is None:
        return hf.read_config(path)
    described = hf.read_config(path)
    differ = [f for f in _SHAPES if getattr(described, f) != getattr(model, f)]
    if differ:
        raise ConfigError(
            f"{knobs.model}: {model.describe()} does not match {knobs.source}={path} "
            f"({described.describe()}; {', '.join(differ)} differ)"
        )
    return model


def open_source(
    source: str | Path,
    model: ModelConfig | str | None = None,
    *,
    vocabulary: Any = None,
    dtype: str | None = None,
    knobs: Knobs,
) -> ModelSource:
    """The model config and vocabulary of ``source`` by the rule in the module docstring (no weights read).
    ``vocabulary``: a spec (a file, or a seqio vocabulary's name) or a vocabulary object used as it is."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{knobs.source}={path} does not exist")
    config = _model(path, model, knobs)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    if vocabulary is not None and not isinstance(vocabulary, (str, os.PathLike)):  # a vocabulary object
        vocab, vocabulary = vocabulary, getattr(vocabulary, "model_file", None) or type(vocabulary).__name__
        return _fit(ModelSource(str(source), config, vocab, vocabulary), knobs)
    if vocabulary is None:
        found = find_vocabulary(path)
        if found is None:
            raise ConfigError(
                f"{knobs.vocabulary}: {path} has no tokenizer.json or tokenizer.model; name the model's vocabulary"
            )
        vocabulary = str(found)
    return _fit(ModelSource(str(source), config, load_vocabulary(vocabulary), str(vocabulary)), knobs)


def _fit(source: ModelSource, knobs: Knobs) -> ModelSource:
    if source.vocab.vocab_size > source.config.vocab_size:
        raise ConfigError(
            f"{knobs.vocabulary}: {source.vocabulary} has {source.vocab.vocab_size} tokens but the model's "
            f"vocab_size is {source.config.vocab_size}"
        )
    return source


def stop_token_ids(vocab, tokens, knob: str) -> list[int]:
    """Token ids of ``tokens`` that end a completion besides EOS; each must be one token of ``vocab``."""
    out = []
    for token in tokens:
        ids = list(vocab.encode(token))
        if len(ids) != 1:
            raise ConfigError(f"{knob}: {token!r} is {len(ids)} tokens, not one")
        out.extend(ids)
    return out
