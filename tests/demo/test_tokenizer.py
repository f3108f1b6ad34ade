"""The world's tokenizer: exact round trips, about one token per word, and the generators' fixed prompt text as
single tokens (so the prompt of a 45-token biography is about 48 tokens)."""

import numpy as np

from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.demo import world as W
from synpro_jax.demo.tokenizer import fixed_prompt_text, train_world_tokenizer
from synpro_jax.generation import prompts


def test_round_trips_and_short_prompts(tmp_path):
    world = W.make_world(people=40, teachers=60, seed=2)
    rng = np.random.default_rng(0)
    texts = [d["text"] for d in world.organic()] + [
        W.answer(op, W.rewrite_reformat(p, rng) if op == "reformat" else W.rewrite_rephrase(p, rng))
        for p in world.teachers
        for op in prompts.OPERATIONS
    ]
    path = train_world_tokenizer(texts, tmp_path / "tokenizer.json", 1024)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically
    vocab = load_vocabulary(str(path))
    assert (vocab.pad_id, vocab.eos_id) == (0, 1)
    for text in texts[:20] + ["unseen words: Zyx 123\n- and ünïcode"]:
        assert vocab.decode(vocab.encode(text)) == text
    bio = world.organic()[0]["text"]
    assert len(vocab.encode(bio)) <= 1.5 * len(bio.split())  # ~1 token per word, and one per punctuation mark
    for fixed in fixed_prompt_text():
        assert len(vocab.encode(fixed)) == 1
    for op in prompts.OPERATIONS:
        ids = vocab.encode(prompts.chat_prompt(op, bio))
        assert len(ids) == len(vocab.encode(bio)) + 3  # BOS, the text before the document, the text after
