"""The GRPO prompts: organic documents turned into generator prompts, and which of them each step reads.

Every document is read once, cut as the release cuts RL sources (at a sentence boundary before
``max_source_chars``, 7,000 characters), and put in the operation's chat prompt; a source that still does not fit
``max_prompt_tokens`` loses its middle in tokens (as in bulk synthesis). Step ``s`` reads global positions
``s*P .. s*P+P-1`` of an endless sequence of epochs, each a fresh permutation of the documents drawn from
(seed, epoch). So the prompts of a step are a pure function of the step number: a resumed run reads exactly the
prompts the uninterrupted run would have, and no host needs to tell another which documents it took.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import hashlib
import json
import logging

import numpy as np

from synpro_jax.data.sources import open_sources
from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.generation.synthesize import PromptBuilder, SynthesisConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PromptItem:
    doc_id: str
    source: str  # the source text the generator sees (after the character cut): what rewards compare against
    ids: list[int]  # the prompt's token ids


class PromptSet:
    """Prompts for ``operation`` over the documents of ``files`` (any format :mod:`synpro_jax.data.sources`
    reads). Documents shorter than ``min_source_chars`` are skipped (and counted): a rewrite of a few words
    teaches the generator little and the release's influence reward needs 500 characters of output. ``what``
    names the documents in messages (the warm start reads its own)."""

    def __init__(
        self,
        files: Sequence[str],
        vocab,
        operation: str,
        *,
        max_prompt_tokens: int,
        max_source_chars: int = prompts_lib.MAX_SOURCE_CHARS,
        min_source_chars: int = 0,
        max_documents: int | None = None,
        text_field: str = "text",
        id_field: str | None = None,
        seed: int = 0,
        system_prompt: str = prompts_lib.SYSTEM_PROMPT,
        what: str = "GRPO prompts",
    ):
        if max_documents is not None and max_documents < 1:
            raise ValueError(f"GRPORunConfig.max_documents={max_documents}: must be >= 1 or None")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"GRPORunConfig.seed={seed!r}: must be an int >= 0")
        self.operation, self.seed = operation, int(seed)
        self._orders: dict[int, np.ndarray] = {}
        # The character cut happens here (at a sentence); the builder only cuts tokens, in the middle.
        builder = PromptBuilder(
            vocab,
            SynthesisConfig(
                operation=operation,
                max_source_chars=10**9,
                max_prompt_tokens=max_prompt_tokens,
                system_prompt=system_prompt,
            ),
        )
        self.items: list[PromptItem] = []
        self.skipped = {"short": 0, "too_long": 0}
        source = open_sources(list(files), text_field=text_field, id_field=id_field)
        for doc in source:
            if max_documents is not None and len(self.items) >= max_documents:
                break
            text = prompts_lib.cut_at_sentence(doc.text.strip(), max_source_chars)
            if len(text) < min_source_chars:
                self.skipped["short"] += 1
                continue
            prompt = builder(text)
            if prompt.ids is None:
                self.skipped["too_long"] += 1
                continue
            self.items.append(PromptItem(str(doc.id), text, list(prompt.ids)))
        if not self.items:
            raise ValueError(
                f"{what} {list(files)}: no usable document (skipped {self.skipped}; "
                f"min_source_chars={min_source_chars}, max_prompt_tokens={max_prompt_tokens})"
            )
        if any(self.skipped.values()):
            log.warning("%s: %d documents, skipped %s", what, len(self.items), self.skipped)
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps([item.doc_id, item.ids]).encode())
        self.digest = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.items)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 4:  # steps read one or two epochs at a time
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
        return self._orders[epoch]

    def indices(self, step: int, prompts_per_step: int) -> list[int]:
        """Document indices of step ``step`` (0-based)."""
        n = len(self.items)
        out = []
        for k in range(step * prompts_per_step, (step + 1) * prompts_per_step):
            out.append(int(self._order(k // n)[k % n]))
        return out

    def batch(self, step: int, prompts_per_step: int) -> list[PromptItem]:
        return [self.items[i] for i in self.indices(step, prompts_per_step)]

    def fingerprint(self) -> dict:
        return {"documents": len(self.items), "sha256": self.digest, "seed": self.seed, "operation": self.operation}
