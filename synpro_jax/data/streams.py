"""A run's data, built in one direction: sources -> tokenized corpus -> budget -> packing -> mixture -> seqio.

:func:`build_streams` reads :class:`~synpro_jax.data.config.DataConfig` once and returns what the trainer needs:
the registered :class:`~synpro_jax.data.tasks.PackedMixture` as its training input, and the held-out organic
documents packed for validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import seqio

from synpro_jax.data import sources as sources_lib
from synpro_jax.data import tasks as tasks_lib
from synpro_jax.data.budget import data_bound_budget, split_validation
from synpro_jax.data.config import DataConfig
from synpro_jax.data.corpus import TokenizedCorpus, build_corpus, unigram_entropy
from synpro_jax.data.mixture import resolve_rates
from synpro_jax.data.packing import PackedStream
from synpro_jax.data.vocab import resolve_vocabulary

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MixtureInput:
    """The trainer's input: the registered mixture ``name`` read through seqio at ``seq_len``; with ``starts``,
    stream ``i`` of the mixture is read from its row ``starts[i]`` on (a stage continuing another's data, see
    :meth:`~synpro_jax.data.mixture.MixedStream.starting_at`)."""

    name: str
    seq_len: int
    starts: tuple[int, ...] = ()

    @property
    def mixture(self) -> tasks_lib.PackedMixture:
        return seqio.get_mixture_or_task(self.name)

    @property
    def row_len(self) -> int:
        return self.seq_len + 1

    @property
    def names(self) -> list[str]:
        return self.mixture.task_names

    def starting_at(self, starts) -> MixtureInput:
        return dataclasses.replace(self, starts=tuple(int(s) for s in starts))

    def stream(self):
        """The rows as a random-access :class:`~synpro_jax.data.mixture.MixedStream` (the registered mixture's
        own packed streams, from ``starts``)."""
        mixed = self.mixture.stream(self.seq_len)
        return mixed.starting_at(self.starts) if any(self.starts) else mixed

    def counting_stream(self):
        """The same rows on packed streams of their own: the trainer counts what a stage read with it while
        tf.data threads read the registered ones."""
        return self.mixture.spec.stream(self.row_len).starting_at(self.starts)

    def dataset(self, shard_info=None, start_row: int = 0):
        return self.mixture.get_dataset(
            {"targets": self.seq_len},
            split="train",
            shard_info=shard_info,
            shuffle=False,
            start_row=start_row,
            stream_starts=self.starts,
        )

    def rows(self, indices):
        """Random access to global rows (the same rows the dataset yields), for tools and tests."""
        return self.stream().rows(indices)


@dataclasses.dataclass
class Streams:
    train: MixtureInput
    validation: PackedStream | None
    mixture: str
    info: dict  # per task: documents, tokens, rate; reports; fingerprint


def open_organic(cfg: DataConfig, eos_id: int | None = None, vocab_size: int | None = None):
    """All organic sources of ``cfg`` (opened and checked up front), read one after another."""
    try:
        return sources_lib.open_sources(cfg.organic, text_field=cfg.text_field, eos_id=eos_id, vocab_size=vocab_size)
    except ValueError as e:
        raise ValueError(f"DataConfig.organic: {e}") from None


def organic_split(cfg: DataConfig, progress: bool = True):
    """(vocabulary, training documents, held-out validation documents or None, read report) of the organic
    corpus: tokenized (cached), ``validation_docs`` held out (or the ``validation`` sources read), then the
    data-bound budget applied to the rest. The SynPro loop synthesizes exactly the training documents' ids."""
    vocab = resolve_vocabulary(
        cfg.vocabulary,
        cache_dir=cfg.cache_dir,
        corpus=cfg.corpus,
        texts=lambda: (d.text for d in open_organic(cfg) if d.text),
    )
    organic, report = build_corpus(
        open_organic(cfg, vocab.eos_id, vocab.vocab_size),
        vocab,
        cfg.cache_dir,
        name=tasks_lib.organic_task_name(cfg.corpus),
        progress=progress,
    )
    if cfg.validation:
        try:
            source = sources_lib.open_sources(
                cfg.validation, text_field=cfg.text_field, eos_id=vocab.eos_id, vocab_size=vocab.vocab_size
            )
        except ValueError as e:
            raise ValueError(f"DataConfig.validation: {e}") from None
        val_organic, _ = build_corpus(
            source,
            vocab,
            cfg.cache_dir,
            name=tasks_lib.organic_task_name(cfg.corpus) + "_validation",
            progress=progress,
        )
        if val_organic.num_docs == 0:
            raise ValueError(f"DataConfig.validation={list(cfg.validation)}: no usable documents")
        train_organic = organic
    elif cfg.validation_docs:
        train_organic, val_organic = split_validation(organic, cfg.validation_docs, cfg.seed)
    else:
        train_organic, val_organic = organic, None
    if cfg.organic_budget_tokens is not None:
        train_organic = data_bound_budget(
            train_organic, cfg.organic_budget_tokens, seed=cfg.seed, order=cfg.budget_order
        )
    return vocab, train_organic, val_organic, report


def build_streams(cfg: DataConfig, seq_len: int, progress: bool = True) -> Streams:
    """Tokenize (cached), hold out validation documents, apply the budget, register the Tasks and the packed
    Mixture, and return the trainer's input."""
    reports: dict[str, str] = {}
    organic_name = tasks_lib.organic_task_name(cfg.corpus)
    vocab, train_organic, val_organic, report = organic_split(cfg, progress)
    reports[organic_name] = report.summary() if report else "(from cache)"
    splits = {"train": train_organic, **({"validation": val_organic} if val_organic is not None else {})}
    tasks_lib.register_corpus_task(organic_name, splits, vocab)
    corpora: dict[str, TokenizedCorpus] = {organic_name: train_organic}
    short = {organic_name: "organic"}

    for shards in cfg.synthetic:
        name = tasks_lib.synthetic_task_name(cfg.corpus, shards.operation, shards.round)
        source = sources_lib.open_source(shards.files, text_field="text", id_field="source_id")
        corpus, report = build_corpus(source, vocab, cfg.cache_dir, name=name, progress=progress)
        reports[name] = report.summary() if report else "(from cache)"
        if corpus.num_docs == 0:
            raise ValueError(f"DataConfig.synthetic {shards}: the shards hold no usable documents ({reports[name]})")
        tasks_lib.register_corpus_task(name, {"train": corpus}, vocab)
        corpora[name], short[name] = corpus, shards.short_name

    rates = resolve_rates(cfg.mixing, {n: c.num_tokens for n, c in corpora.items()}, short)
    mix = tasks_lib.mixture_name(cfg.corpus)
    spec = tasks_lib.MixtureSpec(corpora, rates, vocab.eos_id, cfg.block_rows, cfg.seed)
    mixture = tasks_lib.register_mixture(mix, spec)
    train = MixtureInput(mix, seq_len)
    row_rates = mixture.stream(seq_len).rates
    validation = (
        PackedStream(val_organic, seq_len + 1, vocab.eos_id, seed=cfg.seed, shuffle=False)
        if val_organic is not None
        else None
    )
    info = {
        "mixture": mix,
        "vocabulary": repr(vocab),
        "vocab_size": vocab.vocab_size,
        "tasks": {
            n: {"documents": c.num_docs, "tokens": c.num_tokens, "rate": float(row_rates[i])}
            for i, (n, c) in enumerate(corpora.items())
        },
        "validation_docs": val_organic.num_docs if val_organic is not None else 0,
        "validation_tokens": val_organic.num_tokens if val_organic is not None else 0,
        "organic_unigram_entropy": unigram_entropy(train_organic.tokens),
        "reports": reports,
    }
    info["fingerprint"] = hashlib.sha1(
        json.dumps(
            [cfg.fingerprint_fields(), {n: [c.num_tokens, c.num_docs] for n, c in corpora.items()}],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    return Streams(train, validation, mix, info)


def summarize(info: dict) -> str:
    lines = [f"mixture {info['mixture']} (vocab {info['vocab_size']}):"]
    for name, t in info["tasks"].items():
        lines.append(f"  {name}: {t['documents']:,} docs, {t['tokens']:,} tokens, rate {t['rate']:.3f}")
    lines.append(
        f"  validation: {info['validation_tokens']:,} held-out organic tokens; organic unigram entropy "
        f"{info['organic_unigram_entropy']:.3f} nats/token"
    )
    for name, rep in info["reports"].items():
        lines.append(f"  {name} read: {rep}")
    return "\n".join(lines)
