"""The demo generators' prior skill: supervised rewriting on the world's teaching population.

The release starts GRPO from an instruct model that can already rephrase and reformat. The demo has none, so it
teaches a small model from scratch on rewriting pairs of a *disjoint* population of people (world.py): the chat
prompt of the release's instruction over a teacher's biography, and a fresh perfect rewrite as the answer. Each
batch draws new teachers and new rewrites, so the model learns the operation (copy every fact into other
sentences or into entries, add nothing), not the pairs. The loss is on the answer and its EOS only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses

import numpy as np

from synpro_jax.demo import world as W
from synpro_jax.generation import prompts
from synpro_jax.train.step import next_token_batch

__all__ = ["TeachingStream", "sft_batch"]


@dataclasses.dataclass
class TeachingStream:
    """Endless (prompt ids, answer ids) rows for ``operations`` over ``teachers``, seeded per batch."""

    teachers: Sequence[W.Person]
    vocab: object
    operations: Sequence[str] = prompts.OPERATIONS
    seed: int = 0
    # A share of rows rewrites a biography of only 1 to 5 of the facts: short rows where copying each fact is
    # most of the answer, which the generator learns from faster than from whole biographies alone.
    partial: float = 0.5

    def __post_init__(self):
        if not self.teachers:
            raise ValueError("TeachingStream: no teaching population (World.teachers is empty)")
        self._before = {op: list(self.vocab.encode(prompts.prompt_parts(op)[0])) for op in self.operations}
        self._after = {op: list(self.vocab.encode(prompts.prompt_parts(op)[1])) for op in self.operations}

    def example(self, rng) -> tuple[str, str, str]:
        """(operation, document, answer) of one teaching row, as text."""
        person = self.teachers[int(rng.integers(len(self.teachers)))]
        op = self.operations[int(rng.integers(len(self.operations)))]
        # The document is a fresh biography in random wordings too: the skill must not hang on one wording.
        templates = [int(rng.integers(len(W.TEMPLATES[a]))) for a in W.ATTRIBUTES]
        n = len(W.ATTRIBUTES)
        keep = (
            sorted(int(i) for i in rng.permutation(n)[: rng.integers(1, n)])
            if rng.random() < self.partial
            else list(range(n))
        )
        document = W.biography(person, templates, [keep[int(i)] for i in rng.permutation(len(keep))], rng)
        # The answer states each fact in a template other than the document's: a rewrite, never a copy.
        body = (W.rewrite_rephrase if op == "rephrase" else W.rewrite_reformat)(person, rng, keep, avoid=templates)
        return op, document, W.answer(op, body)

    def row(self, rng) -> tuple[list[int], list[int], str]:
        op, document, answer = self.example(rng)
        prompt = self._before[op] + list(self.vocab.encode(document)) + self._after[op]
        return prompt, list(self.vocab.encode(answer)) + [int(self.vocab.eos_id)], op

    def batch(self, step: int, size: int, length: int, pad_id: int = 0) -> dict:
        """``size`` rows of ``length`` tokens for ``step``, each packed with whole examples (segment ids keep them
        apart), so short rewrites waste no compute on padding."""
        rng = np.random.default_rng([self.seed, step])
        rows: list[list[tuple[list[int], list[int]]]] = [[] for _ in range(size)]
        r, used = 0, 0
        while r < size:
            prompt, answer, _ = self.row(rng)
            n = len(prompt) + len(answer)
            if n > length:
                raise ValueError(f"a teaching example of {n} tokens does not fit TeachConfig.length={length}")
            if used + n > length:
                r, used = r + 1, 0
                if r == size:
                    break
            rows[r].append((prompt, answer))
            used += n
        return sft_batch(rows, length, pad_id)


def sft_batch(rows: Sequence[Sequence[tuple[list[int], list[int]]]], length: int, pad_id: int = 0) -> dict:
    """Next-token rows of packed ``[prompt | answer]`` examples (each its own segment, positions from 0), padded
    to ``length`` tokens, the loss on the answers only. An example that does not fit is cut."""
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.float32)
    seg = np.zeros((len(rows), length), np.int32)
    pos = np.zeros((len(rows), length), np.int32)
    for r, examples in enumerate(rows):
        at = 0
        for k, (prompt, answer) in enumerate(examples, 1):
            row = (list(prompt) + list(answer))[: length - at]
            tokens[r, at : at + len(row)] = row
            mask[r, at + len(prompt) : at + len(row)] = 1.0
            seg[r, at : at + len(row)] = k
            pos[r, at : at + len(row)] = np.arange(len(row))
            at += len(row)
            if at >= length:
                break
    batch = next_token_batch(tokens, mask)
    batch["segment_ids"] = seg[:, :-1]
    batch["positions"] = pos[:, :-1]
    return batch


def evaluate_rewrites(
    sampler,
    vocab,
    people: Sequence[W.Person],
    operation: str,
    *,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float | None = 0.9,
    on_text: Callable[[W.Person, str], None] | None = None,
) -> dict:
    """Rewrite each person's organic biography and score it: the share with exactly one heading (format), the
    mean exact fact score (world.fact_check), and the mean recall of the person's facts."""
    before, after = (list(vocab.encode(part)) for part in prompts.prompt_parts(operation))
    ids = [before + list(vocab.encode(W.organic_biography(p))) + after for p in people]
    out = sampler.generate(
        ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        eos_id=[int(vocab.eos_id)],
        pad_id=0,
    )
    fmt, score, recall = [], [], []
    for person, completion, finished in zip(people, out.completions(), out.finished):
        text = vocab.decode(completion[:-1] if finished else completion)
        parsed = prompts.parse_answer(text, operation)
        check = W.fact_check(person, parsed.text)
        fmt.append(parsed.headings == 1)
        score.append(check.score)
        recall.append(check.recall)
        if on_text is not None:
            on_text(person, text)
    return {"format": float(np.mean(fmt)), "fact_score": float(np.mean(score)), "recall": float(np.mean(recall))}
