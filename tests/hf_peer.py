"""Random HF transformers Olmo2ForCausalLM models: the independent peer for parity tests (torch only here)."""

import torch
import transformers


def make_hf_model(seed: int, **shape):
    torch.manual_seed(seed)
    config = transformers.Olmo2Config(
        **shape,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    model = transformers.Olmo2ForCausalLM(config).eval()
    with torch.no_grad():  # random norm scales too, so a swapped norm cannot hide behind all-ones weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model
