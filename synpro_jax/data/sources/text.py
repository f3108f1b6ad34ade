"""Plain text, plain or compressed (``.txt``, ``.txt.gz``, ``.txt.zst``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from etils.epath import Path

from synpro_jax.data.sources.base import READ_ERRORS, Document, ReadReport, expand_paths, open_binary


class TextSource:
    """Plain text. ``split="paragraph"`` (default) makes each blank-line-separated block a document;
    ``"line"`` each line; ``"file"`` each file."""

    format = "text"
    SPLITS = ("paragraph", "line", "file")

    def __init__(self, paths: str | Sequence[str], split: str = "paragraph"):
        if split not in self.SPLITS:
            raise ValueError(f"TextSource split={split!r}: choose one of {self.SPLITS}")
        self.files = expand_paths(paths, "text source")
        self.split = split
        self.report = ReadReport()

    def describe(self) -> dict:
        """What decides this source's documents (for cache keys): format, files and options."""
        return {"format": self.format, "files": [str(f) for f in self.files], "split": self.split}

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[Document]:
        block: list[str] = []
        start, lineno = 1, 0
        with open_binary(path) as fh:
            try:
                for lineno, raw in enumerate(fh, start=1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self.report.problem("bad_utf8", f"{path}:{lineno}", str(e))
                        continue
                    if self.split == "line":
                        if line.strip():
                            yield self._keep(path, lineno, line.rstrip("\n"))
                        continue
                    if self.split == "paragraph" and not line.strip():
                        if block:
                            yield self._keep(path, start, "".join(block).rstrip("\n"))
                        block, start = [], lineno + 1
                        continue
                    if not block:
                        start = lineno
                    block.append(line)
            except READ_ERRORS as e:  # a truncated .gz/.zst: keep the complete documents, report the cut one
                lost = f"; the {self.split} from line {start} is dropped" if block else ""
                self.report.problem("malformed", f"{path}:{lineno + 1}", f"file ends early or is corrupt ({e}){lost}")
                return
        if block and "".join(block).strip():
            yield self._keep(path, start, "".join(block).rstrip("\n"))
        elif self.split == "file" and not block:
            self.report.problem("empty", f"{path}:1", "empty file")

    def _keep(self, path: Path, lineno: int, text: str) -> Document:
        self.report.documents += 1
        return Document(f"{path.name}:{lineno}", text=text)
