"""Vocabularies usable as ``seqio.Vocabulary``: SentencePiece models (trained here on your own text) and
Hugging Face ``tokenizer.json`` files such as OLMo's dolma2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import json
import logging
import os
import shutil
import tempfile

from etils.epath import Path
import numpy as np
from tokenizers import Tokenizer

from synpro_jax import atomic
from synpro_jax.errors import ConfigError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the logs
import sentencepiece as spm
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

# Data pipelines run on the host: keep TensorFlow off any accelerator JAX owns.
tf.config.set_visible_devices([], "GPU")

log = logging.getLogger(__name__)

# seqio's convention for SentencePiece models: pad 0, eos 1, unk 2, no bos.
SP_PAD_ID, SP_EOS_ID, SP_UNK_ID = 0, 1, 2


def sentencepiece_vocabulary(model_path: str | os.PathLike, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"SentencePiece model {path} does not exist")
    return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)


def train_sentencepiece(
    texts: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    max_sentences: int = 2_000_000,
    overwrite: bool = False,
    keep_newlines: bool = False,
) -> Path:
    """Train a SentencePiece model with seqio's special-token layout; writes ``out_path`` atomically.

    SentencePiece's default normalization (NFKC, extra whitespace removed) turns a newline into a space, so text
    laid out in lines (a reformat generator's entries) comes back as one line. ``keep_newlines`` trains without
    normalization: a newline round-trips as its byte piece."""
    out = Path(out_path)
    if out.suffix != ".model":
        raise ConfigError(f"--out {out}: a SentencePiece model path must end in .model")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite to replace it")
    if vocab_size < 8:
        raise ConfigError(f"--vocab_size {vocab_size}: must be at least 8")
    if not atomic.is_remote(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    lines = (line for text in texts for line in text.splitlines() if line.strip())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.tmp-"))  # SentencePiece writes local files
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_prefix=str(tmp / "sp"),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            pad_id=SP_PAD_ID,
            eos_id=SP_EOS_ID,
            unk_id=SP_UNK_ID,
            bos_id=-1,
            byte_fallback=True,  # no text is ever unencodable
            minloglevel=2,
            **({"normalization_rule_name": "identity", "remove_extra_whitespaces": False} if keep_newlines else {}),
        )
        atomic.write_bytes(out.with_suffix(".vocab"), (tmp / "sp.vocab").read_bytes())
        atomic.write_bytes(out, (tmp / "sp.model").read_bytes())
    except RuntimeError as e:  # e.g. a vocab_size below the 256 byte pieces plus the corpus's characters
        raise ValueError(f"SentencePiece training failed (--vocab_size {vocab_size}): {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class HFTokenizerVocabulary(seqio.Vocabulary):
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` package) as a seqio vocabulary.

    ``eos_id`` and ``pad_id`` are read from the tokenizer's special tokens (``<|endoftext|>`` and ``<|pad|>`` for
    dolma2) unless given. ``vocab_size`` can be padded up (OLMo pads 100,278 to 100,352).
    """

    def __init__(
        self,
        tokenizer_file: str | os.PathLike,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        vocab_size: int | None = None,
    ):
        self._path = Path(tokenizer_file)
        if self._path.is_dir():
            self._path = self._path / "tokenizer.json"
        if not self._path.is_file():
            raise FileNotFoundError(f"tokenizer file {self._path} does not exist")
        try:
            self._tok = Tokenizer.from_str(self._path.read_text(encoding="utf-8"))  # a local or gs:// file
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise ConfigError(f"{self._path}: not a Hugging Face tokenizer.json ({e})") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        base = self._tok.get_vocab_size(with_added_tokens=True)
        self._size = base if vocab_size is None else vocab_size
        if self._size < base:
            raise ValueError(f"vocab_size={vocab_size} is smaller than {self._path}'s {base} tokens")
        self._eos = self._special_id(eos_token, ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>"), "eos")
        self._pad = self._special_id(pad_token, ("<|pad|>", "<pad>", "[PAD]"), "pad", fallback=self._eos)
        super().__init__(extra_ids=0)

    def _special_id(self, given, candidates, what, fallback=None) -> int:
        for token in [given] if given else list(candidates):
            tid = self._tok.token_to_id(token)
            if tid is not None:
                return tid
            if given:
                raise ValueError(f"{self._path}: {what} token {given!r} is not in the vocabulary")
        if fallback is not None:
            return fallback
        raise ValueError(f"{self._path}: no {what} token found among {list(candidates)}; pass {what}_token")

    # seqio.Vocabulary interface -------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def unk_id(self) -> int | None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self._size

    def _encode(self, s: str) -> Sequence[int]:
        return self._tok.encode(s, add_special_tokens=False).ids

    def _decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self._tok.get_vocab_size(with_added_tokens=True)]
        return self._tok.decode(ids, skip_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many documents at once (the tokenizers library runs them in parallel)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def enc(batch: np.ndarray):
            flat = [x.decode("utf-8", errors="replace") for x in batch.reshape(-1)]
            ids = self.encode_batch(flat)
            lengths = np.array([len(i) for i in ids], np.int64)
            values = np.array([t for i in ids for t in i], np.int32)
            return values, lengths

        scalar = s.shape.rank == 0
        flat_s = tf.reshape(s, [-1])
        values, lengths = tf.numpy_function(enc, [flat_s], [tf.int32, tf.int64], stateful=False)
        values.set_shape([None])
        lengths.set_shape([None])
        ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
        return ragged[0] if scalar else ragged

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def dec(batch: np.ndarray):
            rows = batch.reshape(-1, batch.shape[-1]) if batch.ndim else batch.reshape(1, 1)
            return np.array([self._decode(r).encode("utf-8") for r in rows], dtype=object)

        ids = tf.convert_to_tensor(ids)
        out = tf.numpy_function(dec, [ids], tf.string, stateful=False)
        return tf.reshape(out, tf.shape(ids)[:-1])

    def __eq__(self, other) -> bool:
        return isinstance(other, HFTokenizerVocabulary) and (
            atomic.canonical_name(self._path) == atomic.canonical_name(other._path)
            and self._size == other._size
            and self._eos == other._eos
            and self._pad == other._pad
        )

    def __hash__(self) -> int:
        return hash((atomic.canonical_name(self._path), self._size))

    def __repr__(self) -> str:
        return f"HFTokenizerVocabulary({str(self._path)!r}, vocab_size={self._size}, eos={self._eos})"


@dataclasses.dataclass(frozen=True)
class PassthroughVocabulary:
    """Token ids as they are, for pre-tokenized data (gin: ``@synpro.PassthroughVocabulary()``)."""

    size: int
    eos_id: int = 1

    def __post_init__(self):
        if self.size < 2 or not 0 <= self.eos_id < self.size:
            raise ValueError(
                f"PassthroughVocabulary(size={self.size}, eos_id={self.eos_id}): need size >= 2 and 0 <= eos_id < size"
            )


@dataclasses.dataclass(frozen=True)
class TrainedSentencePiece:
    """A SentencePiece vocabulary trained once on the run's organic text and cached
    (gin: ``@synpro.TrainedSentencePiece()``)."""

    size: int

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"TrainedSentencePiece.size={self.size}: must be at least 8")


def find_vocabulary(model_dir: str | os.PathLike) -> Path | None:
    """The tokenizer shipped in a model directory: ``tokenizer.json``, else ``tokenizer.model``, else another
    SentencePiece ``.model``; None if there is none."""
    path = Path(model_dir)
    for candidate in (path / "tokenizer.json", path / "tokenizer.model", *sorted(path.glob("*.model"))):
        if candidate.is_file():
            return candidate
    return None


def load_vocabulary(spec) -> seqio.Vocabulary:
    """``*.model`` -> SentencePiece; ``tokenizer.json`` or a directory holding one -> HF tokenizers;
    :class:`PassthroughVocabulary` -> token ids as they are. A seqio.Vocabulary is returned unchanged."""
    if isinstance(spec, seqio.Vocabulary):
        return spec
    if isinstance(spec, PassthroughVocabulary):
        return seqio.PassThroughVocabulary(spec.size, eos_id=spec.eos_id)
    if isinstance(spec, TrainedSentencePiece):
        raise ValueError(f"{spec}: a trained vocabulary belongs to a run's data; use resolve_vocabulary")
    path = Path(spec)
    if path.suffix == ".model":
        return sentencepiece_vocabulary(path)
    if path.name.endswith(".json") or path.is_dir():
        return HFTokenizerVocabulary(path)
    raise ValueError(
        f"vocabulary {spec!r}: expected a SentencePiece .model file, a tokenizer.json, "
        "PassthroughVocabulary(size, eos_id) or TrainedSentencePiece(size)"
    )


def resolve_vocabulary(
    spec, *, cache_dir: str | os.PathLike, corpus: str, texts: Callable[[], Iterable[str]]
) -> seqio.Vocabulary:
    """The vocabulary ``spec`` names; a :class:`TrainedSentencePiece` is trained on ``texts()`` the first time
    and read from ``cache_dir`` after that."""
    if not isinstance(spec, TrainedSentencePiece):
        return load_vocabulary(spec)
    path = Path(cache_dir) / f"{corpus}_sp{spec.size}.model"
    if not path.exists():
        log.info("training a %d-token SentencePiece vocabulary -> %s", spec.size, path)
        try:
            train_sentencepiece(texts(), path, spec.size)
        except ValueError as e:
            raise ValueError(f"TrainedSentencePiece.size={spec.size}: {e}") from None
    return load_vocabulary(str(path))


def describe(vocab: seqio.Vocabulary) -> dict:
    return {
        "type": type(vocab).__name__,
        "vocab_size": vocab.vocab_size,
        "eos_id": vocab.eos_id,
        "pad_id": vocab.pad_id,
        "repr": json.dumps(repr(vocab)),
    }
