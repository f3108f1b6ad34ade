"""Parquet shards, as Hugging Face datasets ship them (FineWeb, for example), read a batch of rows at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import os

from etils.epath import Path
import pyarrow as pa
import pyarrow.parquet as pq

from synpro_jax import atomic
from synpro_jax.data.sources.base import READ_ERRORS, Document, ReadReport, expand_paths


def _is_text(dtype) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or str(dtype) == "string_view"


class ParquetSource:
    """One document per row of the ``text_field`` column. Rows are streamed in batches of ``batch_rows``, so a
    shard never has to fit in memory. Ids are ``"<file name>:<row>"`` (0-based, as ``datasets`` indexes rows)
    unless ``id_field`` names a column."""

    format = "parquet"

    def __init__(
        self, paths: str | Sequence[str], text_field: str = "text", id_field: str | None = None, batch_rows: int = 1024
    ):
        if batch_rows < 1:
            raise ValueError(f"ParquetSource batch_rows={batch_rows}: must be positive")
        self.files = expand_paths(paths, "parquet source")
        self.text_field, self.id_field, self.batch_rows = text_field, id_field, batch_rows
        self.report = ReadReport()
        for f in self.files:
            self._open(f)  # a missing column or an unreadable footer fails here, before any work

    def describe(self) -> dict:
        """What decides this source's documents (for cache keys): format, files and options."""
        return {
            "format": self.format,
            "files": [str(f) for f in self.files],
            "text_field": self.text_field,
            "id_field": self.id_field,
        }

    def _open(self, path: Path):
        try:
            pf = pq.ParquetFile(path.open("rb") if atomic.is_remote(path) else os.fspath(path))
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
        schema = pf.schema_arrow
        for knob, column in (("text_field", self.text_field), ("id_field", self.id_field)):
            if column is not None and column not in schema.names:
                raise ValueError(f"{path}: no column {column!r} (the source's {knob}); columns: {schema.names}")
        dtype = schema.field(self.text_field).type
        if not _is_text(dtype):
            raise ValueError(f"{path}: column {self.text_field!r} holds {dtype}, not text")
        return pf

    def __iter__(self) -> Iterator[Document]:
        for path in self.files:
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[Document]:
        pf = self._open(path)
        columns = [self.text_field] + ([self.id_field] if self.id_field not in (None, self.text_field) else [])
        first = 0  # row number of the row group's first row
        for group in range(pf.metadata.num_row_groups):
            size = pf.metadata.row_group(group).num_rows
            row = first
            try:  # one row group at a time, so a damaged one costs only its own rows
                for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=[group], columns=columns):
                    texts = batch.column(self.text_field).to_pylist()
                    ids = batch.column(self.id_field).to_pylist() if self.id_field else [None] * len(texts)
                    for text, doc_id in zip(texts, ids):
                        doc = self._parse(path, row, text, doc_id)
                        row += 1
                        if doc is not None:
                            self.report.documents += 1
                            yield doc
            except READ_ERRORS + (pa.ArrowException,) as e:
                self.report.problem(
                    "malformed",
                    f"{path}[{row}]",
                    f"file ends early or is corrupt: rows {row} to "
                    f"{first + size - 1} of row group {group} are lost ({e})",
                )
            first += size

    def _parse(self, path: Path, row: int, text: str | None, doc_id) -> Document | None:
        where = f"{path}[{row}]"
        if text is None:
            self.report.problem("malformed", where, f"{self.text_field!r} is null")
            return None
        if not text.strip():
            self.report.problem("empty", where, "empty document")
            return None
        return Document(str(doc_id) if doc_id is not None else f"{path.name}:{row}", text=text)
