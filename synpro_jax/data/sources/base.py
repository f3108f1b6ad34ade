"""What every source shares: the document record, the read report, path expansion and compressed streams."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import glob
import gzip
import io
import logging
import os
import re
import zlib

from etils.epath import Path
import numpy as np
import zstandard

log = logging.getLogger(__name__)

MAX_EXAMPLES = 20  # problems kept verbatim per report; the rest are counted
PROBLEM_KINDS = ("empty", "malformed", "bad_utf8")
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")

# Errors a compressed or damaged file raises part-way through reading: the readers keep what came before and
# report the rest as one "file ends early or is corrupt" problem at the line where reading stopped.
READ_ERRORS = (OSError, EOFError, zlib.error)

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass
class Document:
    id: str  # stable across runs: "<file name>:<line>" unless the source has an id field
    text: str | None = None
    tokens: np.ndarray | None = None  # pre-tokenized sources


@dataclasses.dataclass
class ReadReport:
    """What a pass over a source kept and skipped, with file:line for the first problems of each kind."""

    documents: int = 0
    empty: int = 0
    malformed: int = 0
    bad_utf8: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def problem(self, kind: str, where: str, detail: str) -> None:
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; one of {PROBLEM_KINDS}")
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind}: {detail}")
            log.warning("skipped %s: %s (%s)", where, kind, detail)

    def merge(self, other: ReadReport) -> None:
        """Add another report's counts and (up to the cap) its examples to this one."""
        for kind in ("documents",) + PROBLEM_KINDS:
            setattr(self, kind, getattr(self, kind) + getattr(other, kind))
        self.examples.extend(other.examples[: max(0, MAX_EXAMPLES - len(self.examples))])

    @property
    def skipped(self) -> int:
        return self.empty + self.malformed + self.bad_utf8

    def summary(self) -> str:
        text = (
            f"{self.documents} documents kept; skipped {self.skipped} "
            f"(empty {self.empty}, malformed {self.malformed}, bad UTF-8 {self.bad_utf8})"
        )
        if self.examples:
            more = self.skipped - len(self.examples)
            text += "\n  " + "\n  ".join(self.examples) + (f"\n  ... and {more} more" if more > 0 else "")
        return text


def _glob(pattern: str) -> list[Path]:
    """Local glob, or an object store's (``gs://bucket/dir/*.jsonl``) through etils.epath."""
    if "://" not in pattern:
        return [Path(m) for m in glob.glob(os.path.expanduser(pattern))]
    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), None)
    if first is None:
        path = Path(pattern)
        return [path] if path.exists() else []
    return list(Path("/".join(parts[:first])).glob("/".join(parts[first:])))


def expand_paths(patterns: str | os.PathLike | Sequence[str | os.PathLike], what: str = "source") -> list[Path]:
    """Glob patterns -> sorted existing files; an error naming the pattern when one matches nothing."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    patterns = [str(p) for p in patterns]
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(_glob(pattern))
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {pattern!r}")
        files.extend(m for m in matches if m.is_file())
    if not files:
        raise FileNotFoundError(f"{what}: {patterns} matched only directories")
    return files


def strip_compression(name: str) -> str:
    """``"x.jsonl.zst"`` -> ``"x.jsonl"`` (lower-cased): the suffix left names the format."""
    lowered = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lowered.endswith(suffix):
            return lowered[: -len(suffix)]
    return lowered


class _ZstdRaw(io.RawIOBase):
    """A zstd file decompressed as a stream, frame after frame (pzstd and concatenated shards have several).

    zstandard's own ``stream_reader`` returns a short read, without an error, when the file stops inside a
    frame; this raises ``EOFError`` there instead, as ``gzip`` does, so a cut shard is reported, not shortened.
    """

    def __init__(self, path: Path, chunk_bytes: int = 1 << 20):
        self._fh = Path(path).open("rb")  # a local or gs:// file
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = None  # the decompressor of the frame being read
        self._pending = b""  # compressed bytes after the end of the last frame
        self._out = memoryview(b"")  # decompressed bytes not handed out yet (a view: no copying per read)
        self._chunk = chunk_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data, self._pending = (self._pending or self._fh.read(self._chunk)), b""
            if not data:
                if self._obj is not None and not self._obj.eof:
                    raise EOFError("zstd file ends before the end of its frame")
                return 0
            if self._obj is None or self._obj.eof:
                self._obj = self._dctx.decompressobj()
            try:
                self._out = memoryview(self._obj.decompress(data))
            except zstandard.ZstdError as e:
                raise OSError(f"corrupt zstd data ({e})") from None
            if self._obj.eof:
                self._pending = self._obj.unused_data
        n = min(len(buffer), len(self._out))
        memoryview(buffer).cast("B")[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def open_binary(path: Path):
    """A file as a stream of bytes, decompressing ``.gz`` and ``.zst``/``.zstd`` on the fly; iterate it for lines."""
    lowered = path.name.lower()
    if lowered.endswith(".gz"):
        return gzip.GzipFile(fileobj=path.open("rb"), mode="rb")
    if lowered.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdRaw(path), buffer_size=1 << 16)
    return path.open("rb")


def lone_surrogate(text: str) -> int | None:
    """Index of the first unpaired UTF-16 surrogate (JSON's ``"\\ud800"`` escape decodes to one), else None.

    Such a string cannot be encoded as UTF-8, so a tokenizer would fail on it much later.
    """
    m = _SURROGATE.search(text)
    return None if m is None else m.start()
