"""The world on disk: the files a SynPro experiment reads, written once per world and reused on a resume.

``world/``:

- ``corpus.jsonl``: the organic corpus, one biography per person (ids ``person<i>``), followed by the oracle's
  further unique data: ``oracle_copies - 1`` perfect rephrasings per person (``person<i>.oracle<k>``, other
  training templates, another order), every person's k-th before anyone's (k+1)-th, each round in its own
  shuffled order of people. The pretraining budget takes documents in this order (``budget_order="corpus"``), so
  a budget of the organic tokens is exactly the organic corpus, and an oracle budget of 1.5 biographies per
  person adds a rephrasing for a random half of the people (both QA's and the reference task's alike).
- ``organic.jsonl``: the organic biographies alone (GRPO's prompts and the probe's scored documents).
- ``validation.jsonl``: a held-out biography per person in the validation frames: the trainer's validation loss,
  which the plateau and the best checkpoint read.
- ``test.jsonl``: a held-out biography per person in the test frames: the held-out loss the result reports.
- ``qa.jsonl``: 4-way cloze questions about the people outside the reference subset, in the QA frames.
- ``reference.jsonl``: the probe's reference task, prompt/completion pairs about the reference subset.
- ``tokenizer.json``: the world's tokenizer (tokenizer.py), shared by the LM and the generators.
- ``world.json``: the world's parameters, written last: the world is complete when it exists.
"""

from __future__ import annotations

import dataclasses
import json

from etils.epath import Path
import numpy as np

from synpro_jax import atomic
from synpro_jax.data import sources as sources_lib
from synpro_jax.demo import world as W
from synpro_jax.demo.tokenizer import train_world_tokenizer
from synpro_jax.errors import ConfigError

__all__ = ["WorldFiles", "write_world"]


@dataclasses.dataclass(frozen=True)
class WorldFiles:
    root: Path
    spec: dict

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.jsonl"

    @property
    def organic(self) -> Path:
        return self.root / "organic.jsonl"

    @property
    def validation(self) -> Path:
        return self.root / "validation.jsonl"

    @property
    def test(self) -> Path:
        return self.root / "test.jsonl"

    @property
    def qa(self) -> Path:
        return self.root / "qa.jsonl"

    @property
    def reference(self) -> Path:
        return self.root / "reference.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def world_json(self) -> Path:
        return self.root / "world.json"

    def world(self) -> W.World:
        return W.make_world(**self.spec["world"])


def _jsonl(path: Path, records) -> None:
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def oracle_documents(world: W.World, copies: int) -> list[dict]:
    """The oracle's unique data after the organic corpus: ``copies - 1`` perfect rephrasings of each person,
    round by round (every person's first rephrasing, then every person's second, ...), each round in a shuffled
    order of the people, so a budget that ends inside a round gives its extra biographies to a random subset."""
    rng = np.random.default_rng([world.seed, 5])
    out = []
    for k in range(1, copies):
        for i in rng.permutation(len(world.people)):
            out.append({"id": f"person{int(i)}.oracle{k}", "text": W.rewrite_rephrase(world.people[int(i)], rng)})
    return out


def training_texts(world: W.World, organic: list[dict], oracle: list[dict], reference: list[dict]) -> list[str]:
    """Every text a model of the demo trains on that the world writes: the organic and oracle biographies, the
    reference task, and a sample of the teaching pairs (the teaching stream draws from the same frames)."""
    texts = [d["text"] for d in organic + oracle]
    texts += [f"{q['prompt']} {q['completion']}" for q in reference]
    for op in ("rephrase", "reformat"):
        texts += [f"{p['document']}\n{p['answer']}" for p in world.sft_pairs(op, per_person=1)]
    return texts


def evaluation_sentences(world: W.World, validation: list[dict], test: list[dict]) -> list[str]:
    """Every sentence the evaluation reads: the held-out biographies' and QA's right answers."""
    return [s for d in validation + test for s in W.split_sentences(d["text"])] + world.qa_sentences()


def write_world(
    root: Path,
    *,
    people: int,
    teachers: int,
    reference_fraction: float,
    seed: int,
    oracle_copies: int,
    vocab_size: int = 2048,
) -> WorldFiles:
    """Write (or find) the world's files under ``root``. A world already there with other parameters is refused:
    nothing is overwritten."""
    root = Path(root)
    spec = {
        "world": {"people": people, "teachers": teachers, "reference_fraction": reference_fraction, "seed": seed},
        "oracle_copies": oracle_copies,
        "vocab_size": vocab_size,
        "version": W.VERSION,
    }
    files = WorldFiles(root, spec)
    if files.world_json.exists():
        found = json.loads(files.world_json.read_text(encoding="utf-8"))
        if found != spec:
            raise ConfigError(f"{files.world_json} describes another world ({found}); use another --out")
        return files
    if oracle_copies < 2:
        raise ConfigError(f"oracle_copies={oracle_copies}: the oracle needs at least 2 biographies per person")
    root.mkdir(parents=True, exist_ok=True)
    world = W.make_world(**spec["world"])
    organic = world.organic()
    oracle = oracle_documents(world, oracle_copies)
    validation, test, qa, reference = world.validation(), world.test(), world.qa(), world.reference()
    # The evaluation's wording is reserved: no text a model trains on may contain one of its sentences.
    seen = W.verbatim(evaluation_sentences(world, validation, test), training_texts(world, organic, oracle, reference))
    if seen:
        raise AssertionError(f"world seed {seed}: {len(seen)} evaluation sentences are in training text: {seen[:3]}")
    _jsonl(files.corpus, organic + oracle)
    _jsonl(files.organic, organic)
    _jsonl(files.validation, validation)
    _jsonl(files.test, test)
    _jsonl(files.qa, qa)
    _jsonl(files.reference, reference)
    # The tokenizer sees every text the LM and the generators will read or write, the teaching rewrites included.
    rng = np.random.default_rng([seed, 6])
    texts = [d["text"] for d in organic + oracle + validation + test]
    texts += [W.organic_biography(p) for p in world.teachers]
    texts += [W.answer("rephrase", W.rewrite_rephrase(p, rng)) for p in world.teachers]
    texts += [W.answer("reformat", W.rewrite_reformat(p, rng)) for p in world.teachers]
    texts += [f"{q['prompt']} {q['completion']}" for q in reference]
    texts += [f"{q['context']} {c}" for q in qa for c in q["choices"]]
    train_world_tokenizer(texts, files.tokenizer, vocab_size)
    atomic.write_json(files.world_json, spec)
    return files


@dataclasses.dataclass(frozen=True)
class CorpusFiles:
    """The demo's files for the user's own text (``synpro demo --corpus``): the same layout as the world's, without
    the QA task; the reference task is the user's (``--reference``)."""

    root: Path
    spec: dict
    reference_files: tuple[str, ...]

    corpus = WorldFiles.corpus
    organic = WorldFiles.organic
    validation = WorldFiles.validation
    test = WorldFiles.test
    tokenizer = WorldFiles.tokenizer

    @property
    def done(self) -> Path:
        return self.root / "corpus.json"


def write_corpus(
    root: Path,
    sources,
    reference,
    *,
    share: float,
    heldout_docs: int = 64,
    text_field: str = "text",
    vocab_size: int = 4096,
) -> CorpusFiles:
    """The user's documents under ``root``: every ``k``-th held out (at most ``heldout_docs``), alternately for
    validation (the plateau, the best checkpoint) and test (the reported loss), the rest in their order as
    ``corpus.jsonl``; ``organic.jsonl`` is its first ``share`` of the documents (round 0's data, GRPO's prompts);
    a byte-level BPE tokenizer with the generators' prompt text as added tokens. Found, not
    rewritten, when written before with the same parameters; refused with others."""
    root = Path(root)
    sources, reference = [str(s) for s in sources], [str(r) for r in reference]
    if not reference:
        raise ConfigError(
            "synpro demo --corpus needs --reference FILES: the probe's reference task (FLAN CoT .tsv "
            "or prompt/completion .jsonl)"
        )
    spec = {
        "corpus": sources,
        "heldout_docs": heldout_docs,
        "share": share,
        "text_field": text_field,
        "vocab_size": vocab_size,
        "layout": 2,  # 2: validation and test held out apart
    }
    files = CorpusFiles(root, spec, tuple(reference))
    if files.done.exists():
        found = json.loads(files.done.read_text(encoding="utf-8"))
        if found != spec:
            raise ConfigError(f"{files.done} was written for another corpus ({found}); use another --out")
        return files
    try:
        docs = [
            {"id": d.id, "text": d.text}
            for d in sources_lib.open_sources(sources, text_field=text_field)
            if d.text and d.text.strip()
        ]
    except ValueError as e:
        raise ConfigError(f"synpro demo --corpus: {e}") from None
    if len(docs) < 20:
        raise ConfigError(f"synpro demo --corpus {sources}: {len(docs)} usable documents; give at least 20")
    every = max(2, len(docs) // heldout_docs)
    held = [d for i, d in enumerate(docs) if i % every == every - 1][:heldout_docs]
    held_ids = {d["id"] for d in held}
    train = [d for d in docs if d["id"] not in held_ids]
    root.mkdir(parents=True, exist_ok=True)
    _jsonl(files.corpus, train)
    _jsonl(files.organic, train[: max(1, int(len(train) * share))])
    if len(held) < 2:
        raise ConfigError(
            f"synpro demo --corpus {sources}: {len(held)} held-out document(s); validation and test need 2"
        )
    _jsonl(files.validation, held[0::2])
    _jsonl(files.test, held[1::2])
    train_world_tokenizer((d["text"] for d in train), files.tokenizer, vocab_size)
    atomic.write_json(files.done, spec)
    return files
