"""Named model sizes, from a unit-test toy to the OLMo-2 shapes SynPro trains, and Qwen3 beside them."""

from __future__ import annotations

from synpro_jax.models.config import ModelConfig

_OLMO_VOCAB = 100_352  # dolma2's 100,278 tokens padded to a multiple of 128

PRESETS: dict[str, ModelConfig] = {
    # Unit tests: every dimension divides an 8-way mesh axis except the 4 kv heads (exercises the fallback).
    "tiny": ModelConfig(
        name="tiny",
        vocab_size=256,
        d_model=64,
        num_layers=2,
        num_heads=8,
        num_kv_heads=4,
        mlp_dim=128,
        max_seq_len=512,
    ),
    # CPU sizes for smoke runs, examples and benchmarks on a laptop-class machine.
    # (fully unrolled layer scans: compile stays short at this size and XLA:CPU runs them ~10% faster)
    "cpu_small": ModelConfig(
        name="cpu_small",
        vocab_size=4096,
        d_model=256,
        num_layers=4,
        num_heads=4,
        mlp_dim=1024,
        max_seq_len=1024,
        scan_unroll=4,
    ),
    "cpu_medium": ModelConfig(
        name="cpu_medium",
        vocab_size=8192,
        d_model=512,
        num_layers=8,
        num_heads=8,
        mlp_dim=2048,
        max_seq_len=2048,
        scan_unroll=8,
    ),
    # The paper's pretraining models (release configs).
    "olmo_400m": ModelConfig(
        name="olmo_400m",
        vocab_size=_OLMO_VOCAB,
        d_model=1024,
        num_layers=16,
        num_heads=16,
        mlp_dim=4096,
        max_seq_len=2048,
    ),
    "olmo_1b": ModelConfig(
        name="olmo_1b",
        vocab_size=_OLMO_VOCAB,
        d_model=2048,
        num_layers=16,
        num_heads=16,
        mlp_dim=8192,
        max_seq_len=2048,
    ),
    # The generator: the shape of allenai/OLMo-2-0425-1B-Instruct (4k context).
    "olmo2_1b_instruct": ModelConfig(
        name="olmo2_1b_instruct",
        vocab_size=_OLMO_VOCAB,
        d_model=2048,
        num_layers=16,
        num_heads=16,
        mlp_dim=8192,
        max_seq_len=4096,
    ),
    # Qwen3 (HF Qwen3ForCausalLM) for unit tests: pre-norm, per-head q/k norms, tied head, GQA, and a head_dim
    # (16) that is not d_model / num_heads (8).
    "qwen3_tiny": ModelConfig(
        name="qwen3_tiny",
        architecture="qwen3",
        tie_embeddings=True,
        vocab_size=256,
        d_model=64,
        num_layers=2,
        num_heads=8,
        num_kv_heads=4,
        head_dim=16,
        mlp_dim=128,
        rope_theta=1_000_000.0,
        max_seq_len=512,
    ),
    # The shape of Qwen/Qwen3-0.6B (its config.json; 596M params, 440M outside the tied embedding).
    "qwen3_0_6b": ModelConfig(
        name="qwen3_0_6b",
        architecture="qwen3",
        tie_embeddings=True,
        vocab_size=151_936,
        d_model=1024,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=3072,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=40_960,
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The preset ``name``, with any ModelConfig field overridden (e.g. ``dtype="bfloat16"``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def describe_presets() -> str:
    return "\n".join(cfg.describe() for cfg in PRESETS.values())
