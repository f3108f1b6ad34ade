"""Document sources, and the one function that decides how a spec is read: :func:`open_source`.

Formats: JSON lines (``.jsonl``/``.json``/``.ndjson``, plain, ``.gz`` or ``.zst``), plain text (``.txt``, plain,
``.gz`` or ``.zst``), Parquet (``.parquet``), TFDS (``tfds:NAME/SPLIT``), token files (``.npy``/``.bin``) and
the built-in Markov corpus (``markov:VOCAB:DOCS:LENGTH[:SEED]``).

Each source checks at construction that its files exist and that the text field is there, so a typo fails
before any work starts. While reading, malformed records, missing fields, empty documents, bad UTF-8 and files
that end early are skipped, counted in a :class:`ReadReport` and named by ``file:line``; nothing crashes
half-way and nothing vanishes silently.
"""

from __future__ import annotations

import glob
import os

from synpro_jax.data.sources.base import (
    MAX_EXAMPLES,
    Document,
    ReadReport,
    expand_paths,
    open_binary,
    strip_compression,
)
from synpro_jax.data.sources.chain import ChainedSource
from synpro_jax.data.sources.jsonl import JsonlSource
from synpro_jax.data.sources.parquet import ParquetSource
from synpro_jax.data.sources.text import TextSource
from synpro_jax.data.sources.tfds import TfdsSource
from synpro_jax.data.sources.tokens import MarkovSource, NpyTokenSource, TokenFileSource
from synpro_jax.errors import ConfigError

__all__ = [
    "Document",
    "ReadReport",
    "MAX_EXAMPLES",
    "expand_paths",
    "open_binary",
    "JsonlSource",
    "TextSource",
    "ParquetSource",
    "TfdsSource",
    "NpyTokenSource",
    "TokenFileSource",
    "MarkovSource",
    "FORMATS",
    "format_of",
    "is_pretokenized",
    "open_source",
    "open_sources",
    "ChainedSource",
]

FORMATS = ("jsonl", "text", "parquet", "tokens", "tfds", "markov")
PRETOKENIZED = ("tokens", "markov")
SPEC_HELP = (
    "a .jsonl/.json/.ndjson[.gz|.zst], .txt[.gz|.zst], .parquet or .npy/.bin path (globs allowed), "
    "tfds:NAME[/CONFIG]/SPLIT or markov:VOCAB:DOCS:LENGTH[:SEED]"
)

_SUFFIXES = (
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".json", "jsonl"),
    (".txt", "text"),
    (".parquet", "parquet"),
    (".npy", "tokens"),
    (".bin", "tokens"),
)
_READ_UNCOMPRESSED = ("parquet", "tokens")  # compressed inside already, or memory-mapped


def _file_format(name: str) -> str | None:
    base = strip_compression(name)
    for suffix, fmt in _SUFFIXES:
        if base.endswith(suffix):
            if base != name.lower() and fmt in _READ_UNCOMPRESSED:
                raise ConfigError(f"source {name!r}: {fmt} files are read uncompressed; decompress it first")
            return fmt
    return None


def format_of(spec: str | os.PathLike) -> str:
    """The format a spec is read as, one of :data:`FORMATS`.

    The suffix of the spec decides; a glob whose pattern ends otherwise (``"shards/*"``) is decided by the files
    it matches, which must then all have one format.
    """
    spec = os.fspath(spec)
    if spec.startswith("markov:"):
        return "markov"
    if spec.startswith("tfds:"):
        return "tfds"
    fmt = _file_format(spec)
    if fmt is not None:
        return fmt
    if not glob.has_magic(spec):
        raise ConfigError(f"source {spec!r}: cannot tell the format; give {SPEC_HELP}")
    formats: dict[str, str] = {}
    for f in expand_paths(spec, "source"):
        found = _file_format(f.name)
        if found is None:
            raise ConfigError(f"source {spec!r}: cannot tell the format of {f}; give {SPEC_HELP}")
        formats.setdefault(found, str(f))
    if len(formats) > 1:
        raise ConfigError(f"source {spec!r} matches files of several formats ({formats}); give one spec per format")
    return next(iter(formats))


def is_pretokenized(spec: str | os.PathLike) -> bool:
    """Whether a spec yields token ids (token files, Markov) rather than text."""
    return format_of(spec) in PRETOKENIZED


def open_source(
    spec: str | os.PathLike,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    eos_id: int | None = None,
    vocab_size: int | None = None,
    text_split: str = "paragraph",
    token_dtype: str = "uint32",
    data_dir: str | None = None,
):
    """Open one source spec (see :data:`SPEC_HELP`); every caller that reads documents goes through here.

    Args apply where they mean something and are ignored elsewhere, so one call serves every format:
      text_field: the JSON field / Parquet column / TFDS feature holding the text.
      id_field: the JSON field / Parquet column holding a document id (default ``"<file name>:<line or row>"``).
      eos_id: the EOS id that separates documents in token files (required for them).
      vocab_size: token ids at or above it, in token files, are an error naming the file and offset; a Markov
        spec with a larger vocabulary is refused.
      text_split: how plain text is cut into documents: ``"paragraph"``, ``"line"`` or ``"file"``.
      token_dtype: the dtype of headerless token files (OLMo's are ``uint32``).
      data_dir: the TFDS data directory.

    Returns a source: iterable of :class:`Document`, with ``report`` (a :class:`ReadReport`), ``format`` and
    ``describe()``.
    """
    spec = os.fspath(spec)
    fmt = format_of(spec)
    if fmt == "markov":
        src = MarkovSource.from_spec(spec)
        if vocab_size is not None and src.vocab_size > vocab_size:
            raise ConfigError(
                f"source {spec!r}: its vocabulary of {src.vocab_size} is larger than the model "
                f"vocabulary ({vocab_size})"
            )
        return src
    if fmt == "tfds":
        rest = spec[len("tfds:") :]
        name, split = rest.rsplit("/", 1) if "/" in rest else (rest, "train")
        return TfdsSource(name, split or "train", text_field=text_field, data_dir=data_dir)
    if fmt == "jsonl":
        return JsonlSource(spec, text_field=text_field, id_field=id_field)
    if fmt == "text":
        return TextSource(spec, split=text_split)
    if fmt == "parquet":
        return ParquetSource(spec, text_field=text_field, id_field=id_field)
    if eos_id is None:
        raise ConfigError(f"source {spec!r}: token files need eos_id (the vocabulary's EOS id separates documents)")
    return NpyTokenSource(spec, eos_id=eos_id, dtype=token_dtype, vocab_size=vocab_size)


def open_sources(specs, **kwargs) -> ChainedSource:
    """Open several specs (each checked up front, as :func:`open_source`) read one after another; text and
    pre-tokenized specs cannot be mixed."""
    specs = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    if not specs:
        raise ConfigError("no source specs given")
    kinds = {is_pretokenized(s) for s in specs}
    if len(kinds) > 1:
        raise ConfigError(f"sources {specs}: mix text and pre-tokenized sources; use one kind")
    return ChainedSource([open_source(s, **kwargs) for s in specs])
