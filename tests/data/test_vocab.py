"""Vocabularies: SentencePiece trained here and HF tokenizer.json, each round-tripping through seqio's API."""

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")

from synpro_jax.data import vocab as vocab_lib  # noqa: E402

_rng = np.random.default_rng(0)
_SYLLABLES = ["ka", "to", "ri", "men", "sol", "vu", "an", "dre", "li", "pho", "ne", "st", "qua", "zo"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pretraining is running out of human-written text, so we rephrase it.",
    "Numbers like 3.14159 and symbols #@! should survive; so should naïve café unicode.",
] * 40 + [" ".join("".join(_rng.choice(_SYLLABLES, size=_rng.integers(1, 4))) for _ in range(12)) for _ in range(300)]


@pytest.fixture(scope="module")
def sp_vocab(tmp_path_factory):
    path = vocab_lib.train_sentencepiece(TEXTS, tmp_path_factory.mktemp("sp") / "toy.model", vocab_size=400)
    return vocab_lib.load_vocabulary(str(path))


def test_sentencepiece_round_trip(sp_vocab):
    assert isinstance(sp_vocab, seqio.Vocabulary)
    assert (sp_vocab.pad_id, sp_vocab.eos_id, sp_vocab.unk_id) == (0, 1, 2)
    for text in TEXTS[:3] + ["unseen 字 characters"]:
        ids = sp_vocab.encode(text)
        assert sp_vocab.decode(ids) == text  # byte fallback: nothing is lost
    tf_ids = sp_vocab.encode_tf(tf.constant(TEXTS[0]))
    assert tf_ids.numpy().tolist() == sp_vocab.encode(TEXTS[0])
    assert sp_vocab.decode_tf(tf_ids).numpy().decode() == TEXTS[0]


def test_sentencepiece_refuses_overwrite(tmp_path):
    out = vocab_lib.train_sentencepiece(TEXTS, tmp_path / "a.model", vocab_size=400)
    with pytest.raises(FileExistsError):
        vocab_lib.train_sentencepiece(TEXTS, out, vocab_size=400)
    with pytest.raises(ValueError, match="must end in .model"):
        vocab_lib.train_sentencepiece(TEXTS, tmp_path / "a.bin", vocab_size=400)


@pytest.fixture(scope="module")
def hf_vocab(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS, trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return vocab_lib.HFTokenizerVocabulary(path, vocab_size=512)


def test_hf_tokenizer_round_trip(hf_vocab):
    assert isinstance(hf_vocab, seqio.Vocabulary)
    assert hf_vocab.eos_id == 0 and hf_vocab.pad_id == 1 and hf_vocab.vocab_size == 512
    for text in TEXTS[:3] + ["unseen 字 characters"]:
        assert hf_vocab.decode(hf_vocab.encode(text)) == text
    batch = tf.constant(TEXTS[:2])
    ragged = hf_vocab.encode_tf(batch)
    assert ragged.to_list() == hf_vocab.encode_batch(TEXTS[:2])
    single = hf_vocab.encode_tf(tf.constant(TEXTS[1]))
    assert single.numpy().tolist() == hf_vocab.encode(TEXTS[1])
    dense = tf.constant([hf_vocab.encode(TEXTS[2])])
    assert hf_vocab.decode_tf(dense).numpy()[0].decode() == TEXTS[2]


def test_hf_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vocab_lib.HFTokenizerVocabulary(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        vocab_lib.HFTokenizerVocabulary(bad)


def test_keep_newlines_round_trips_lines(tmp_path):
    """A reformat generator writes one entry per line: its vocabulary must give the newlines back."""
    from synpro_jax.data.vocab import load_vocabulary, train_sentencepiece

    texts = ["- Topic: Rivers Content: Water runs downhill to the sea.", "Plain prose about cats and dogs."] * 40
    text = "Heading:\n- Topic: Rivers Content: water.\n- Topic: Cats Content: cats."
    kept = load_vocabulary(str(train_sentencepiece(texts, tmp_path / "kept.model", 290, keep_newlines=True)))
    assert kept.decode(kept.encode(text)) == text
    default = load_vocabulary(str(train_sentencepiece(texts, tmp_path / "default.model", 290)))
    assert "\n" not in default.decode(default.encode(text))  # why the option exists
