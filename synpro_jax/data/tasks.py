"""seqio Tasks and Mixtures for SynPro's pretraining data, and the packed streams the trainer reads.

Names say what each is: ``synpro_<corpus>_organic`` for the organic documents and
``synpro_<corpus>_<operation>_r<round>`` for a generator's synthetic shards; their mixture is
``synpro_<corpus>_mix``. Every Task has one ``targets`` feature over the shared vocabulary, so
``seqio.get_mixture_or_task(name).get_dataset(...)`` works as with any seqio task. The trainer itself reads the
same documents through :func:`build_streams`, which tokenizes once (cached), holds out validation documents,
applies the data-bound budget and packs deterministic, resumable streams mixed at the Mixture's rates.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the logs
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from synpro_jax.data import sources as sources_lib
from synpro_jax.data.corpus import TokenizedCorpus, build_corpus, data_bound_budget
from synpro_jax.data.packing import MixedStream, PackedStream
from synpro_jax.data.vocab import load_vocabulary

log = logging.getLogger(__name__)

# task name -> a function that opens its document reader (kept beside seqio's registry so the trainer can read
# documents without a tf.data round trip).
_READERS: dict[str, Callable[[], object]] = {}


def organic_task_name(corpus: str) -> str:
    return f"synpro_{corpus}_organic"


def synthetic_task_name(corpus: str, operation: str, round_: int) -> str:
    return f"synpro_{corpus}_{operation}_r{round_}"


def mixture_name(corpus: str) -> str:
    return f"synpro_{corpus}_mix"


def _check_name(name: str) -> None:
    if not name.replace("_", "").isalnum() or not name.islower():
        raise ValueError(f"name {name!r}: use lower-case letters, digits and underscores")


def register_task(name: str, open_reader: Callable[[], object], vocabulary: seqio.Vocabulary,
                  pretokenized: bool = False, overwrite: bool = True) -> seqio.Task:
    """Register a Task whose ``train`` split is the documents of ``open_reader()`` (a synpro source).

    Text sources are tokenized by seqio; ``pretokenized`` sources (token files, the Markov corpus) pass through.
    """

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        if pretokenized:
            def gen():
                for doc in open_reader():
                    yield {"targets": doc.tokens.astype(np.int32), "id": doc.id}

            return tf.data.Dataset.from_generator(gen, output_signature={
                "targets": tf.TensorSpec((None,), tf.int32), "id": tf.TensorSpec((), tf.string)})

        def gen():
            for doc in open_reader():
                yield {"text": doc.text, "id": doc.id}

        return tf.data.Dataset.from_generator(gen, output_signature={
            "text": tf.TensorSpec((), tf.string), "id": tf.TensorSpec((), tf.string)})

    if overwrite and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    steps = [] if pretokenized else [
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text", "id": "id"}),
        seqio.preprocessors.tokenize,
    ]
    task = seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=steps + [seqio.preprocessors.append_eos],
        output_features={"targets": seqio.Feature(vocabulary, add_eos=True)},
    )
    _READERS[name] = open_reader
    return task


def register_synthetic_task(corpus: str, operation: str, round_: int, pattern: str, vocabulary: seqio.Vocabulary):
    """Register generator shards (JSONL records {source_id, text, ...}, see generation/synthesize.py) as the task
    ``synpro_<corpus>_<operation>_r<round>``; returns the opener of its document reader."""
    def opener():
        return sources_lib.JsonlSource(pattern, text_field="text", id_field="source_id")

    register_task(synthetic_task_name(corpus, operation, round_), opener, vocabulary)
    return opener


def register_mixture(name: str, rates: dict[str, float], overwrite: bool = True) -> seqio.Mixture:
    if overwrite and name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, list(rates.items()))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The pretraining data of one run (gin: ``synpro.DataConfig``)."""

    corpus: str  # short name used in the task names, e.g. "dclm"
    organic: tuple[str, ...]  # source specs: file globs (.jsonl/.json[.gz], .txt, .npy) or tfds:NAME/SPLIT
    vocabulary: str  # SentencePiece .model or tokenizer.json
    text_field: str = "text"
    synthetic: tuple[str, ...] = ()  # generator shards "OPERATION:ROUND:GLOB", JSONL with a text field
    organic_budget_tokens: int | None = None  # data-bound mode: exactly this many unique organic tokens
    mixing: str = "tokens"  # "tokens" (rates proportional to token counts) or "OP=rate,..." with organic=...
    validation_docs: int = 64  # organic documents held out for validation perplexity
    block_rows: int = 1024
    seed: int = 0
    cache_dir: str = "runs/cache"

    def __post_init__(self):
        _check_name(self.corpus)
        if not self.organic:
            raise ValueError("DataConfig.organic: give at least one organic source")
        if self.organic_budget_tokens is not None and self.organic_budget_tokens < 1:
            raise ValueError(f"DataConfig.organic_budget_tokens={self.organic_budget_tokens}: must be positive")
        if self.validation_docs < 0:
            raise ValueError(f"DataConfig.validation_docs={self.validation_docs}: must be >= 0")
        for spec in self.synthetic:
            if spec.count(":") < 2:
                raise ValueError(f"DataConfig.synthetic entry {spec!r}: expected OPERATION:ROUND:GLOB")


def _is_pretokenized(spec: str) -> bool:
    return spec.startswith("markov:") or spec.lower().endswith((".npy", ".bin"))


def _open_organic(spec: str, text_field: str, eos_id: int):
    if spec.startswith("markov:"):
        return lambda: sources_lib.MarkovSource.from_spec(spec)
    if spec.lower().removesuffix(".gz").endswith((".jsonl", ".json")):
        return lambda: sources_lib.JsonlSource(spec, text_field=text_field)
    if spec.lower().endswith((".npy", ".bin")):
        return lambda: sources_lib.NpyTokenSource(spec, eos_id=eos_id)
    if spec.startswith("tfds:"):
        return lambda: sources_lib.open_source(spec, text_field=text_field)
    return lambda: sources_lib.open_source(spec)


class _Chain:
    """Several sources read one after another, with one combined report."""

    def __init__(self, openers):
        self.parts = [o() for o in openers]  # opening validates files and fields up front
        self.files = [f for p in self.parts for f in getattr(p, "files", [])]
        self.name = "|".join(getattr(p, "name", type(p).__name__) for p in self.parts)
        self.text_field = "|".join(str(getattr(p, "text_field", "")) for p in self.parts)
        self.report = sources_lib.ReadReport()

    def __iter__(self):
        for part in self.parts:
            yield from part
            r = part.report
            for k in ("documents", "empty", "malformed", "bad_utf8"):
                setattr(self.report, k, getattr(self.report, k) + getattr(r, k))
            self.report.examples.extend(r.examples[: sources_lib.MAX_EXAMPLES - len(self.report.examples)])


def _split_validation(corpus: TokenizedCorpus, n_val: int, seed: int) -> tuple[TokenizedCorpus, TokenizedCorpus]:
    if n_val >= corpus.num_docs:
        raise ValueError(f"DataConfig.validation_docs={n_val} leaves no training documents "
                         f"(the organic corpus has {corpus.num_docs})")
    order = np.random.default_rng([seed, 1]).permutation(corpus.num_docs)
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    return corpus.subset(train), corpus.subset(val)


@dataclasses.dataclass
class Streams:
    train: MixedStream
    validation: PackedStream | None
    mixture: str
    info: dict  # per task: documents, tokens, rate; reports; fingerprint


def build_streams(cfg: DataConfig, seq_len: int, progress: bool = True) -> Streams:
    """Register the run's Tasks and Mixture, tokenize (cached), and return the packed train/validation streams."""
    row_len = seq_len + 1
    organic_name = organic_task_name(cfg.corpus)
    vocab = _vocabulary(cfg)
    openers = [_open_organic(s, cfg.text_field, vocab.eos_id) for s in cfg.organic]
    pretokenized = {_is_pretokenized(s) for s in cfg.organic}
    if len(pretokenized) > 1:
        raise ValueError(f"DataConfig.organic={cfg.organic}: mixes text and pre-tokenized sources; use one kind")
    register_task(organic_name, lambda: _Chain(openers), vocab, pretokenized=pretokenized.pop())
    task_corpora: dict[str, TokenizedCorpus] = {}
    reports: dict[str, str] = {}

    organic_reader = _Chain(openers)
    full, report = build_corpus(organic_reader, vocab, cfg.cache_dir, name=organic_name, progress=progress)
    reports[organic_name] = report.summary() if report else "(from cache)"
    train_organic, val_organic = (_split_validation(full, cfg.validation_docs, cfg.seed)
                                  if cfg.validation_docs else (full, None))
    if cfg.organic_budget_tokens is not None:
        train_organic = data_bound_budget(train_organic, cfg.organic_budget_tokens, seed=cfg.seed)
    task_corpora[organic_name] = train_organic

    for spec in cfg.synthetic:
        operation, round_, pattern = spec.split(":", 2)
        name = synthetic_task_name(cfg.corpus, operation, int(round_))
        opener = register_synthetic_task(cfg.corpus, operation, int(round_), pattern, vocab)
        corpus, report = build_corpus(opener(), vocab, cfg.cache_dir, name=name, progress=progress)
        reports[name] = report.summary() if report else "(from cache)"
        task_corpora[name] = corpus

    rates = _rates(cfg, task_corpora)
    mix = mixture_name(cfg.corpus)
    register_mixture(mix, rates)
    names = list(task_corpora)
    streams = [PackedStream(task_corpora[n], row_len, vocab.eos_id, seed=cfg.seed) for n in names]
    train = MixedStream(streams, [rates[n] for n in names], names=names, block_rows=cfg.block_rows, seed=cfg.seed)
    validation = (PackedStream(val_organic, row_len, vocab.eos_id, seed=cfg.seed, shuffle=False)
                  if val_organic is not None else None)
    info = {
        "mixture": mix,
        "vocabulary": repr(vocab),
        "vocab_size": vocab.vocab_size,
        "tasks": {n: {"documents": task_corpora[n].num_docs, "tokens": task_corpora[n].num_tokens,
                      "rate": float(train.rates[i])} for i, n in enumerate(names)},
        "validation_tokens": val_organic.num_tokens if val_organic is not None else 0,
        "organic_unigram_entropy": unigram_entropy(train_organic.tokens),
        "reports": reports,
    }
    info["fingerprint"] = hashlib.sha1(json.dumps(
        [dataclasses.asdict(cfg), {n: [c.num_tokens, c.num_docs] for n, c in task_corpora.items()}],
        sort_keys=True).encode()).hexdigest()[:16]
    return Streams(train, validation, mix, info)


def _vocabulary(cfg: DataConfig) -> seqio.Vocabulary:
    """The configured vocabulary; ``train-sentencepiece:SIZE`` trains one on the organic text once and caches it."""
    if not cfg.vocabulary.startswith("train-sentencepiece:"):
        return load_vocabulary(cfg.vocabulary)
    try:
        size = int(cfg.vocabulary.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"DataConfig.vocabulary={cfg.vocabulary!r}: expected train-sentencepiece:SIZE") from None
    path = Path(cfg.cache_dir) / f"{cfg.corpus}_sp{size}.model"
    if not path.exists():
        from synpro_jax.data.vocab import train_sentencepiece

        texts = (d.text for d in _Chain([_open_organic(s, cfg.text_field, 1) for s in cfg.organic]) if d.text)
        log.info("training a %d-token SentencePiece vocabulary on %s -> %s", size, cfg.organic, path)
        train_sentencepiece(texts, path, size)
    return load_vocabulary(str(path))


def _rates(cfg: DataConfig, corpora: dict[str, TokenizedCorpus]) -> dict[str, float]:
    if cfg.mixing == "tokens":
        return {n: float(c.num_tokens) for n, c in corpora.items()}
    given: dict[str, float] = {}
    for part in cfg.mixing.split(","):
        key, _, value = part.partition("=")
        try:
            given[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"DataConfig.mixing={cfg.mixing!r}: expected 'tokens' or NAME=RATE pairs") from None
    out = {}
    for n in corpora:
        short = "organic" if n == organic_task_name(cfg.corpus) else n.removeprefix(f"synpro_{cfg.corpus}_")
        if short not in given and n not in given:
            raise ValueError(f"DataConfig.mixing={cfg.mixing!r} gives no rate for {short!r} ({n})")
        out[n] = given.get(short, given.get(n))
    return out


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats/token) of the empirical token distribution: the loss of a model that ignores context."""
    counts = np.bincount(tokens.astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def task_documents(name: str):
    """The registered reader of a task (for tests and tools)."""
    if name not in _READERS:
        raise KeyError(f"no synpro task {name!r}; registered: {sorted(_READERS)}")
    return _READERS[name]()


def summarize(info: dict) -> str:
    lines = [f"mixture {info['mixture']} (vocab {info['vocab_size']}):"]
    for name, t in info["tasks"].items():
        lines.append(f"  {name}: {t['documents']:,} docs, {t['tokens']:,} tokens, rate {t['rate']:.3f}")
    lines.append(f"  validation: {info['validation_tokens']:,} held-out organic tokens; organic unigram entropy "
                 f"{info['organic_unigram_entropy']:.3f} nats/token")
    for name, rep in info["reports"].items():
        lines.append(f"  {name} read: {rep}")
    return "\n".join(lines)


def write_synthetic_shard(path: str | Path, records: Sequence[dict]) -> None:
    """Write generator output as a JSONL shard: {source_id, operation, text, ...} per line (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            missing = {"source_id", "operation", "text"} - set(r)
            if missing:
                raise ValueError(f"synthetic record lacks {sorted(missing)}: {r}")
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
