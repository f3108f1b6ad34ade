"""Random HF transformers models (Olmo2ForCausalLM, Qwen3ForCausalLM): the independent peers for parity tests
(torch only here), and HF's greedy ``generate`` as the reference for the sampler."""

import numpy as np
import torch
import transformers


def randomize(model):
    """Every weight random, the norm scales around 1 (so a swapped norm cannot hide behind all-ones weights)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


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
    return randomize(transformers.Olmo2ForCausalLM(config).eval())


def make_qwen3_model(seed: int, **shape):
    torch.manual_seed(seed)
    config = transformers.Qwen3Config(
        **shape,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return randomize(transformers.Qwen3ForCausalLM(config).eval())


def hf_greedy(model, prompts: list[list[int]], max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """HF ``generate``'s greedy tokens [N, max_new_tokens] and their log-probs for left-padded prompts (as the
    sampler lays them out), no stop token."""
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        attention[i, width - len(p) :] = 1
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
            eos_token_id=None,
        )
    tokens = ref.sequences[:, width:]
    logp = torch.log_softmax(torch.stack(ref.scores, 1).float(), -1).gather(-1, tokens[..., None])[..., 0]
    return tokens.numpy(), logp.numpy()
