"""What a run's pretraining data is: :class:`DataConfig` (gin: ``synpro.DataConfig``) and its structured parts.

Everything is a gin-native value, as a t5x user would write it::

    synpro.DataConfig.corpus = "dclm"
    synpro.DataConfig.organic = ["data/dclm/*.jsonl.zst"]
    synpro.DataConfig.vocabulary = "tokenizers/dolma2.json"          # or @synpro.TrainedSentencePiece()
    synpro.DataConfig.synthetic = [("rephrase", 1, "runs/r1/synth/*.jsonl")]
    synpro.DataConfig.mixing = {"organic": 3, "rephrase_r1": 1}       # or "tokens"
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any


def check_name(name: str, knob: str) -> None:
    if not name or not name.replace("_", "").isalnum() or not name.islower():
        raise ValueError(f"{knob}={name!r}: use lower-case letters, digits and underscores")


@dataclasses.dataclass(frozen=True)
class SyntheticShards:
    """One generator round's output shards (JSONL records ``{source_id, text, ...}``), mixed in as the task
    ``synpro_<corpus>_<operation>_r<round>``."""

    operation: str
    round: int
    files: str  # a glob

    def __post_init__(self):
        check_name(self.operation, "SyntheticShards.operation")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"SyntheticShards.round={self.round!r}: must be a non-negative integer")
        if not isinstance(self.files, str) or not self.files:
            raise ValueError(f"SyntheticShards.files={self.files!r}: give a file glob")

    @property
    def short_name(self) -> str:
        return f"{self.operation}_r{self.round}"

    @classmethod
    def of(cls, value: Any) -> SyntheticShards:
        """From a SyntheticShards, a tuple ``(operation, round, files)`` or a dict with those keys."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            try:
                return cls(**dict(value))
            except TypeError as e:
                raise ValueError(
                    f"DataConfig.synthetic entry {dict(value)!r}: expected the keys operation, round, files ({e})"
                ) from None
        if isinstance(value, (tuple, list)) and len(value) == 3:
            return cls(*value)
        raise ValueError(
            f"DataConfig.synthetic entry {value!r}: expected (operation, round, files), e.g. "
            "('rephrase', 1, 'runs/r1/synth/*.jsonl')"
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The pretraining data of one run (gin: ``synpro.DataConfig``)."""

    corpus: str  # short name used in the task names, e.g. "dclm"
    organic: tuple[str, ...]  # source specs: globs (.jsonl[.gz|.zst], .parquet, .txt, .npy/.bin), tfds:NAME/SPLIT
    vocabulary: Any  # a SentencePiece .model / tokenizer.json path, PassthroughVocabulary or TrainedSentencePiece
    text_field: str = "text"
    synthetic: tuple = ()  # SyntheticShards, (operation, round, files) tuples or dicts
    organic_budget_tokens: int | None = None  # data-bound mode: exactly this many unique organic tokens
    mixing: Any = "tokens"  # "tokens" (rates proportional to token counts) or {"organic": 3, "rephrase_r1": 1}
    validation_docs: int = 64  # organic documents held out for validation perplexity
    # Validation documents read from these sources instead (a fixed held-out set); validation_docs is then unused.
    validation: tuple[str, ...] = ()
    # The order the data-bound budget takes documents in: "random" (seeded) or "corpus" (the sources' own order,
    # for a corpus written in priority order, such as the demo world's: one biography per person first).
    budget_order: str = "random"
    block_rows: int = 1024
    seed: int = 0
    cache_dir: str = "runs/cache"

    def __post_init__(self):
        check_name(self.corpus, "DataConfig.corpus")
        organic = (self.organic,) if isinstance(self.organic, str) else tuple(self.organic or ())
        if not organic:
            raise ValueError("DataConfig.organic: give at least one organic source")
        object.__setattr__(self, "organic", organic)
        synthetic = self.synthetic
        if isinstance(synthetic, (SyntheticShards, Mapping)):
            synthetic = (synthetic,)  # one entry given bare
        synthetic = tuple(SyntheticShards.of(s) for s in (synthetic or ()))
        names = [s.short_name for s in synthetic]
        if len(set(names)) != len(names):
            raise ValueError(f"DataConfig.synthetic: {names} names a round twice")
        object.__setattr__(self, "synthetic", synthetic)
        if self.mixing != "tokens" and not isinstance(self.mixing, Mapping):
            raise ValueError(
                f"DataConfig.mixing={self.mixing!r}: expected 'tokens' or a dict of rates such as "
                "{'organic': 3, 'rephrase_r1': 1}"
            )
        if isinstance(self.mixing, Mapping):
            object.__setattr__(self, "mixing", dict(self.mixing))
        if self.organic_budget_tokens is not None and self.organic_budget_tokens < 1:
            raise ValueError(f"DataConfig.organic_budget_tokens={self.organic_budget_tokens}: must be positive")
        if self.validation_docs < 0:
            raise ValueError(f"DataConfig.validation_docs={self.validation_docs}: must be >= 0")
        validation = (self.validation,) if isinstance(self.validation, str) else tuple(self.validation or ())
        object.__setattr__(self, "validation", validation)
        if self.budget_order not in ("random", "corpus"):
            raise ValueError(f"DataConfig.budget_order={self.budget_order!r}: 'random' or 'corpus'")
        if self.block_rows < 1:
            raise ValueError(f"DataConfig.block_rows={self.block_rows}: must be >= 1")

    def fingerprint_fields(self) -> dict:
        """The config as plain JSON-able values (for fingerprints and summaries)."""
        out = dataclasses.asdict(self)
        out["vocabulary"] = repr(self.vocabulary) if not isinstance(self.vocabulary, str) else self.vocabulary
        return out
