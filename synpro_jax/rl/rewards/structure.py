"""``structure_local``: 1 if the answer keeps the source's layout, a rule-based stand-in for the release's LLM judge
(Qwen3-4B asked whether paragraphing, lists, code blocks, tables and markdown are preserved, meaning ignored).

The layout of a text is counted as: paragraphs (blocks between blank lines), list items (lines opening with a
bullet or a number), markdown headings, fenced code blocks and table rows (lines between pipes). The answer keeps
the layout when every kind the source has is present in the answer and every kind the source lacks is absent, and
the paragraph and list-item counts are within a factor ``max_ratio`` (2) of the source's. An empty answer has no
layout: 0.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from synpro_jax.rl.rewards.base import RewardInputs, register_reward
from synpro_jax.rl.rewards.common import answers, group_sources

_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S", re.MULTILINE)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.MULTILINE)
_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_TABLE = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Layout:
    paragraphs: int
    items: int
    headings: int
    code_blocks: int
    table_rows: int


def layout(text: str) -> Layout:
    paragraphs = sum(1 for block in re.split(r"\n[ \t]*\n", text) if block.strip())
    return Layout(
        paragraphs,
        len(_ITEM.findall(text)),
        len(_HEADING.findall(text)),
        len(_FENCE.findall(text)) // 2,
        len(_TABLE.findall(text)),
    )


def _within(a: int, b: int, ratio: float) -> bool:
    return max(a, b) <= ratio * min(a, b) if min(a, b) > 0 else a == b


def same_layout(source: str, answer: str, max_ratio: float = 2.0) -> bool:
    src, out = layout(source), layout(answer)
    if out.paragraphs == 0:
        return False
    for field in ("items", "headings", "code_blocks", "table_rows"):
        if (getattr(src, field) > 0) != (getattr(out, field) > 0):
            return False
    return _within(src.paragraphs, out.paragraphs, max_ratio) and _within(src.items, out.items, max_ratio)


@register_reward("structure_local")
class StructureLocalReward:
    name = "structure_local"

    def __init__(self, max_ratio: float = 2.0):
        if not max_ratio >= 1:
            raise ValueError(f"structure_local max_ratio={max_ratio}: must be >= 1")
        self.max_ratio = float(max_ratio)

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        texts = answers(inputs)
        group_sources(inputs)  # the same source across a group, as every per-source reward checks
        return np.array([same_layout(s, a, self.max_ratio) for s, a in zip(inputs.sources, texts)], np.float32)
