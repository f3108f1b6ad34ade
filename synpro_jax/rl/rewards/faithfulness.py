"""``faithfulness_lexical`` (reformat): the share of the answer's Topic/Content entries whose words the source
supports, a lexical heuristic standing in for the release's fine-tuned verifier (Qwen3-1.7B labelling each pair
Faithful / Unfaithful_Topic / Unfaithful_Content against the source's first 3,000 characters).

Words are lowercased alphanumeric runs, stop words dropped, a plural "s" cut. An entry is supported when at
least ``topic_support`` (0.5) of its topic's words and ``content_support`` (0.75) of its content's words occur
in the source's first ``window`` (3,000) characters; a topic or content with no words left is unsupported.
Entries are parsed with ``prompts.parse_entries`` from the answer after the heading; the reward is 0 when none
parse, as in the release. It checks vocabulary only: a reordered fact or a negation passes. A source with no
words in its window cannot be judged: RewardError.
"""

from __future__ import annotations

import re

import numpy as np

from synpro_jax.generation.prompts import parse_entries
from synpro_jax.rl.rewards.base import RewardError, RewardInputs, register_reward
from synpro_jax.rl.rewards.common import answers, group_sources

_WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    """a an the and or but nor of in on at to for from by with without about into onto over
under as is are was were be been being it its this that these those there their they them he she his her him we
our you your i me my not no so than then too very can could may might must shall should will would do does did
has have had also such which who whom whose what when where why how all any each both either neither more most
other some only own same just if because while during before after above below between out up down off again
further once here s t""".split()
)


def words(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        if w in STOP_WORDS:
            continue
        out.append(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def support(text: str, vocabulary: set[str]) -> float:
    """Share of ``text``'s words found in ``vocabulary``; 0 when it has none."""
    ws = words(text)
    return sum(w in vocabulary for w in ws) / len(ws) if ws else 0.0


@register_reward("faithfulness_lexical")
class FaithfulnessLexicalReward:
    name = "faithfulness_lexical"

    def __init__(self, window: int = 3000, topic_support: float = 0.5, content_support: float = 0.75):
        if window < 1:
            raise ValueError(f"faithfulness_lexical window={window}: must be >= 1")
        for knob, v in (("topic_support", topic_support), ("content_support", content_support)):
            if not 0 <= v <= 1:
                raise ValueError(f"faithfulness_lexical {knob}={v}: must be in [0, 1]")
        self.window, self.topic_support, self.content_support = int(window), topic_support, content_support

    def __call__(self, inputs: RewardInputs) -> np.ndarray:
        texts = answers(inputs)
        _, sources, where = group_sources(inputs)
        vocab = []
        for s in sources:
            v = set(words(s[: self.window]))
            if not v:
                raise RewardError(
                    f"faithfulness_lexical: a source has no words in its first {self.window} characters: {s[:60]!r}"
                )
            vocab.append(v)
        out = np.zeros(len(texts), np.float32)
        for i, text in enumerate(texts):
            entries = parse_entries(text)
            if entries:
                v = vocab[where[i]]
                ok = [
                    support(e.topic, v) >= self.topic_support and support(e.content, v) >= self.content_support
                    for e in entries
                ]
                out[i] = np.mean(ok)
        return out
