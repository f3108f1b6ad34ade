"""The world's tokenizer: a byte-level BPE (Hugging Face ``tokenizers``, saved as ``tokenizer.json``) trained on
the world's texts, so every name, value and template word is about one token.

The generators' fixed prompt text (the release's system prompt and instruction, 340 tokens of it in a
word-level vocabulary) and the answer headings are *added tokens*, one token each, as chat templates' role tags
are. The text the generators read is unchanged; a 1M-parameter generator then spends its compute on the
biography it rewrites, not on the instruction, which makes the teaching steps about 3x cheaper.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import os
import tempfile

from etils.epath import Path
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from synpro_jax.generation import prompts

__all__ = ["fixed_prompt_text", "train_world_tokenizer", "PAD", "EOS"]

PAD, EOS = "<|pad|>", "<|endoftext|>"  # ids 0 and 1: seqio's pad/eos layout


def fixed_prompt_text(template: prompts.ChatTemplate = prompts.OLMO2_CHAT) -> list[str]:
    """The generator prompts' fixed parts (before and after the document, per operation, without the BOS the
    template opens with) and the answer headings: the strings that become single added tokens."""
    out: list[str] = []
    for op in prompts.OPERATIONS:
        before, after = prompts.prompt_parts(op, template)
        if before.startswith(template.bos):
            before = before[len(template.bos) :]
        out += [before, after, prompts.HEADINGS[op]]
    return list(dict.fromkeys(out))


def train_world_tokenizer(
    texts: Iterable[str], out_path: str | os.PathLike, vocab_size: int = 2048, fixed: Sequence[str] | None = None
) -> Path:
    """Train a byte-level BPE on ``texts`` and add ``fixed`` (default :func:`fixed_prompt_text`) as whole tokens;
    writes ``out_path`` (a tokenizer.json) atomically. Byte-level BPE round-trips any text exactly."""
    out = Path(out_path)
    if vocab_size < 300:
        raise ValueError(f"train_world_tokenizer: vocab_size={vocab_size} is below the 256 bytes plus specials")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fixed = fixed_prompt_text() if fixed is None else list(fixed)
    tok.add_tokens([AddedToken(s, normalized=False, single_word=False, lstrip=False, rstrip=False) for s in fixed])
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        tok.save(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
