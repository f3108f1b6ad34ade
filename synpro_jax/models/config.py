"""The decoder's configuration, its validation and its size arithmetic."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from synpro_jax.checks import positive_ints

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What the backward pass keeps of each block: everything ("none"), nothing (recompute all: "full"), every matmul's
# output ("dots_saveable", attention scores included), or only the named projections ("projections": q, k, v, o and
# the MLP's gate, up and down outputs; attention scores and elementwise work are recomputed, as MaxText's
# save-the-projections policies do).
REMAT_POLICIES = ("none", "full", "dots_saveable", "projections")
# The names "projections" saves (jax.ad_checkpoint.checkpoint_name in models/olmo.py).
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# How attention is computed: "auto" picks cuDNN flash on GPU (bf16), splash on TPU, the reference elsewhere.
ATTENTION_IMPLS = ("auto", "reference", "xla", "cudnn", "splash")
# The decoder's block layout (models/olmo.py): "olmo2" norms each sublayer's output before the residual add and
# q/k over their full projected width; "qwen3" (HF Qwen3ForCausalLM) norms each sublayer's input (pre-norm) and
# q/k per head over head_dim, one [head_dim] scale shared by all heads.
ARCHITECTURES = ("olmo2", "qwen3")
# Fields a config records only where they differ from these (see ModelConfig.settings).
_NEW_FIELD_DEFAULTS = {"architecture": "olmo2", "tie_embeddings": False}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of an OLMo-2 (or Qwen3) style decoder. Hashable, so it can be a static jit argument."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None  # None: same as num_heads (no GQA)
    head_dim: int | None = None  # None: d_model // num_heads
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 4096
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: str = "none"  # REMAT_POLICIES; True/False read as "full"/"none"
    attention: str = "auto"  # ATTENTION_IMPLS
    loss_chunk: int = 0  # > 0: the loss runs over this many positions at a time, never holding [B, T, V] logits
    scan_unroll: int = 1  # layers per scan iteration; unrolling trades compile time for speed (helps on CPU)
    # False: the layers as straight-line code (the scan fully unrolled), as MaxText runs them on GPU; parameters
    # stay stacked on a leading layers axis either way, so checkpoints and HF interop do not change.
    scan_layers: bool = True
    architecture: str = "olmo2"  # ARCHITECTURES
    tie_embeddings: bool = False  # True: no lm_head parameter; the output head is the embedding table transposed
    name: str = "custom"

    def __post_init__(self):
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat={self.remat!r}: choose one of {REMAT_POLICIES}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"ModelConfig.architecture={self.architecture!r}: choose one of {ARCHITECTURES}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"ModelConfig.tie_embeddings={self.tie_embeddings!r}: must be True or False")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention={self.attention!r}: choose one of {ATTENTION_IMPLS}")
        if not isinstance(self.loss_chunk, int) or self.loss_chunk < 0:
            raise ValueError(f"ModelConfig.loss_chunk={self.loss_chunk!r}: must be an int >= 0 (0: the dense loss)")
        positive_ints(self, "vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_seq_len")
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"ModelConfig.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_kv_heads={self.num_kv_heads} must be >= 1 and divide num_heads={self.num_heads}"
            )
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for rotary embeddings")
        if not 1 <= self.scan_unroll <= self.num_layers:
            raise ValueError(
                f"ModelConfig.scan_unroll={self.scan_unroll}: must be in [1, num_layers={self.num_layers}]"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"ModelConfig.dtype={self.dtype!r}: choose one of {sorted(DTYPES)}")
        if self.rope_theta <= 0:
            raise ValueError(f"ModelConfig.rope_theta={self.rope_theta}: must be positive")
        if not 0 < self.norm_eps < 1:
            raise ValueError(f"ModelConfig.norm_eps={self.norm_eps}: must be in (0, 1)")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict:
        """The fields as a dict (what a run records), less ``architecture`` and ``tie_embeddings`` where they hold
        their OLMo-2 defaults: an OLMo-2 config records exactly what it did before those fields existed, so
        checkpoints written then still resume."""
        out = dataclasses.asdict(self)
        for field, default in _NEW_FIELD_DEFAULTS.items():
            if out[field] == default:
                del out[field]
        return out

    # --- size arithmetic -------------------------------------------------------------------------------------
    def layer_params(self) -> int:
        d, hd = self.d_model, self.head_dim
        attn = d * self.num_heads * hd * 2 + d * self.num_kv_heads * hd * 2  # q, o, k, v
        # OLMo-2 norms q and k over their full width; Qwen3 per head, one [head_dim] scale each.
        qk_norm = 2 * hd if self.architecture == "qwen3" else (self.num_heads + self.num_kv_heads) * hd
        mlp = 3 * d * self.mlp_dim
        return attn + qk_norm + mlp + 2 * d  # two sublayer norms

    def num_params(self) -> int:
        """All parameters: embedding, blocks, final norm and the output head (none of its own when tied)."""
        tables = 1 if self.tie_embeddings else 2
        return tables * self.vocab_size * self.d_model + self.num_layers * self.layer_params() + self.d_model

    def num_matmul_params(self) -> int:
        """Parameters that take part in a matmul per token: everything but the embedding lookup and norms (a
        tied head counts: the table serves the output matmul too)."""
        d, hd = self.d_model, self.head_dim
        per_layer = d * self.num_heads * hd * 2 + d * self.num_kv_heads * hd * 2 + 3 * d * self.mlp_dim
        return self.num_layers * per_layer + self.vocab_size * self.d_model

    def train_flops_per_token(self, seq_len: int) -> float:
        """Forward+backward FLOPs per token: 6N for the matmuls plus 12 * L * H * hd * T for attention.

        The attention term counts the full T x T score and value matmuls (as PaLM's MFU does), not half.
        """
        attn = 12 * self.num_layers * self.num_heads * self.head_dim * seq_len
        return 6 * self.num_matmul_params() + attn

    def describe(self) -> str:
        gqa = f", {self.num_kv_heads} kv heads" if self.num_kv_heads != self.num_heads else ""
        arch = "" if self.architecture == "olmo2" else f"{self.architecture}, "
        arch += "tied embeddings, " if self.tie_embeddings else ""
        return (
            f"{self.name}: {arch}{self.num_params() / 1e6:,.2f}M params ({self.num_matmul_params() / 1e6:,.2f}M in "
            f"matmuls) | d_model {self.d_model}, {self.num_layers} layers, {self.num_heads} heads{gqa}, "
            f"head_dim {self.head_dim}, mlp {self.mlp_dim}, vocab {self.vocab_size}, rope theta "
            f"{self.rope_theta:g}, {self.dtype}"
        )
