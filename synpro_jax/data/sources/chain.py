"""Several sources read one after another as one, with one combined report."""

from __future__ import annotations

from synpro_jax.data.sources.base import ReadReport


class ChainedSource:
    def __init__(self, parts: list):
        self.parts = parts
        self.files = [f for p in parts for f in getattr(p, "files", [])]
        self.name = "|".join(getattr(p, "name", type(p).__name__) for p in parts)
        self.text_field = "|".join(str(getattr(p, "text_field", "")) for p in parts)
        self.format = "|".join(getattr(p, "format", type(p).__name__) for p in parts)
        self.report = ReadReport()

    def describe(self) -> dict:
        return {
            "format": "chain",
            "parts": [p.describe() if hasattr(p, "describe") else type(p).__name__ for p in self.parts],
        }

    def __iter__(self):  # one pass per instance: open_sources makes a fresh one (its report counts that pass)
        for part in self.parts:
            yield from part
            self.report.merge(part.report)
