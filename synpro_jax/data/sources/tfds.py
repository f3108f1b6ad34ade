"""A prepared TFDS dataset."""

from __future__ import annotations

from collections.abc import Iterator

from synpro_jax.data.sources.base import Document, ReadReport


class TfdsSource:
    """A prepared TFDS dataset (never downloaded here: ``download=False``). ``split`` may carry a TFDS slice,
    e.g. ``"train[:10%]"``."""

    format = "tfds"

    def __init__(self, name: str, split: str = "train", text_field: str = "text", data_dir: str | None = None):
        import tensorflow_datasets as tfds  # heavy (and it loads TensorFlow): only a tfds: source needs it

        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"TFDS dataset {name!r} (data_dir={data_dir}): cannot be opened ({first_line})") from None
        if not self.builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared under data_dir={data_dir}; "
                "prepare it first (this library never downloads data)"
            )
        features = self.builder.info.features
        if text_field not in features:
            raise ValueError(f"TFDS dataset {name!r}: no feature {text_field!r}; features: {sorted(features)}")
        if split.partition("[")[0] not in self.builder.info.splits:
            raise ValueError(f"TFDS dataset {name!r}: no split {split!r}; splits: {sorted(self.builder.info.splits)}")
        self.name, self.split, self.text_field, self.data_dir = name, split, text_field, data_dir
        self.report = ReadReport()

    def describe(self) -> dict:
        """What decides this source's documents (for cache keys): format, dataset and options."""
        return {
            "format": self.format,
            "name": self.name,
            "split": self.split,
            "text_field": self.text_field,
            "version": str(self.builder.info.version),
            "data_dir": str(self.builder.data_dir),
        }

    def __iter__(self) -> Iterator[Document]:
        ds = self.builder.as_dataset(split=self.split, shuffle_files=False)
        for i, ex in enumerate(ds.as_numpy_iterator()):
            raw = ex[self.text_field]
            where = f"tfds:{self.name}/{self.split}[{i}]"
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError as e:
                self.report.problem("bad_utf8", where, str(e))
                continue
            if not text.strip():
                self.report.problem("empty", where, "empty document")
                continue
            self.report.documents += 1
            yield Document(f"{self.name}/{self.split}:{i}", text=text)
