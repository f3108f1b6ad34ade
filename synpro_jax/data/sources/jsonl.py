"""JSON lines, plain or compressed (``.gz``; ``.zst`` as DCLM-Baseline ships its shards)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import json

from etils.epath import Path

from synpro_jax.data.sources.base import READ_ERRORS, Document, ReadReport, expand_paths, lone_surrogate, open_binary


class JsonlSource:
    """One document per JSON line; ``.gz`` and ``.zst`` files are decompressed as a stream."""

    format = "jsonl"

    def __init__(
        self, paths: str | Sequence[str], text_field: str = "text", id_field: str | None = None, probe_lines: int = 50
    ):
        self.files = expand_paths(paths, "jsonl source")
        self.text_field, self.id_field = text_field, id_field
        self.report = ReadReport()
        for f in self.files:
            self._check_field(f, probe_lines)

    def describe(self) -> dict:
        """What decides this source's documents (for cache keys): format, files and options."""
        return {
            "format": self.format,
            "files": [str(f) for f in self.files],
            "text_field": self.text_field,
            "id_field": self.id_field,
        }

    def _check_field(self, path: Path, probe_lines: int) -> None:
        seen_keys: set[str] = set()
        try:
            with open_binary(path) as fh:
                for i, raw in enumerate(fh):
                    if i >= probe_lines:
                        break
                    try:
                        record = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        continue
                    if isinstance(record, dict):
                        if self.text_field in record:
                            return
                        seen_keys.update(record)
        except READ_ERRORS as e:
            raise ValueError(f"{path}: cannot be read ({e})") from None
        if seen_keys:
            raise ValueError(
                f"{path}: text field {self.text_field!r} not found in the first {probe_lines} lines; "
                f"fields present: {sorted(seen_keys)}"
            )

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            with open_binary(path) as fh:
                lineno = 0
                try:
                    for lineno, raw in enumerate(fh, start=1):
                        doc = self._parse(path, lineno, raw)
                        if doc is not None:
                            self.report.documents += 1
                            yield doc
                except READ_ERRORS as e:  # a truncated .gz/.zst: keep what was read, report the rest
                    self.report.problem("malformed", f"{path}:{lineno + 1}", f"file ends early or is corrupt ({e})")

    def _parse(self, path: Path, lineno: int, raw: bytes) -> Document | None:
        where = f"{path}:{lineno}"
        if not raw.strip():
            return None  # blank lines are formatting, not documents
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.report.problem("bad_utf8", where, str(e))
            return None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            self.report.problem("malformed", where, f"invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})")
            return None
        if not isinstance(record, dict) or self.text_field not in record:
            self.report.problem("malformed", where, f"no {self.text_field!r} field")
            return None
        text = record[self.text_field]
        if not isinstance(text, str):
            self.report.problem("malformed", where, f"{self.text_field!r} is {type(text).__name__}, not text")
            return None
        if not text.strip():
            self.report.problem("empty", where, "empty document")
            return None
        doc_id = str(record[self.id_field]) if self.id_field and self.id_field in record else f"{path.name}:{lineno}"
        for field, value in ((self.text_field, text), (self.id_field, doc_id)):
            at = lone_surrogate(value)
            if at is not None:  # valid JSON (a "\ud800" escape) that no UTF-8 encoder accepts
                self.report.problem(
                    "bad_utf8", where, f"{field!r} has an unpaired surrogate U+{ord(value[at]):04X} at character {at}"
                )
                return None
        return Document(doc_id, text=text)
