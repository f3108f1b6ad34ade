"""seqio registration: SynPro's Tasks, and the Mixture that is the trainer's input.

Names say what each is: ``synpro_<corpus>_organic`` for the organic documents, ``synpro_<corpus>_<operation>_r<round>``
for a generator round's shards, and ``synpro_<corpus>_mix`` for their mixture. Every Task has one ``targets``
feature over the shared vocabulary.

The Mixture is a :class:`PackedMixture`: its ``get_dataset`` yields the packed, block-mixed, data-bound-repeated
rows the trainer trains on, token for token, so what a t5x user reads with
``seqio.get_mixture_or_task("synpro_dclm_mix").get_dataset({"targets": 2048}, shard_info=...)`` is the run's input.
Rates are row shares, and every row holds the same number of tokens, so they are token shares (seqio's default
sampler weighs examples, i.e. documents, instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import logging
import os
import threading

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the logs
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from synpro_jax.data import sources as sources_lib  # noqa: E402
from synpro_jax.data.corpus import TokenizedCorpus  # noqa: E402
from synpro_jax.data.mixture import MixedStream  # noqa: E402
from synpro_jax.data.packing import TRAINING_FEATURES, PackedStream  # noqa: E402

log = logging.getLogger(__name__)

# task name -> a function that opens its document reader, so tools and tests can read a task's documents
# without a tf.data round trip.
_READERS: dict[str, Callable[[], object]] = {}


def organic_task_name(corpus: str) -> str:
    return f"synpro_{corpus}_organic"


def synthetic_task_name(corpus: str, operation: str, round_: int) -> str:
    return f"synpro_{corpus}_{operation}_r{round_}"


def mixture_name(corpus: str) -> str:
    return f"synpro_{corpus}_mix"


def _add_task(
    name: str, dataset_fn, splits: Sequence[str], vocabulary: seqio.Vocabulary, tokenize: bool, overwrite: bool
) -> seqio.Task:
    if overwrite and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    steps = [seqio.preprocessors.tokenize] if tokenize else []
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
        preprocessors=steps + [seqio.preprocessors.append_eos],
        output_features={"targets": seqio.Feature(vocabulary, add_eos=True)},
    )


def register_corpus_task(
    name: str, splits: Mapping[str, TokenizedCorpus], vocabulary: seqio.Vocabulary, overwrite: bool = True
) -> seqio.Task:
    """A Task whose splits are tokenized corpora, in corpus order: exactly the documents a run trains and
    validates on (after the held-out split and the data-bound budget)."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        corpus = splits[split]
        ragged = tf.RaggedTensor.from_row_splits(corpus.tokens, corpus.offsets)
        return tf.data.Dataset.from_tensor_slices(
            {"targets": ragged, "id": np.array(corpus.doc_ids, dtype=object)}
        ).map(lambda ex: {"targets": ex["targets"], "id": ex["id"]})

    task = _add_task(name, dataset_fn, list(splits), vocabulary, tokenize=False, overwrite=overwrite)

    def documents():
        c = splits["train"]
        return (sources_lib.Document(c.doc_ids[i], tokens=c.doc(i)) for i in range(c.num_docs))

    _READERS[name] = documents
    return task


def register_text_task(
    name: str, open_reader: Callable[[], object], vocabulary: seqio.Vocabulary, overwrite: bool = True
) -> seqio.Task:
    """A Task whose ``train`` split is the text documents of ``open_reader()`` (a synpro source), tokenized by
    seqio."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        def gen():
            for doc in open_reader():
                yield {"targets": doc.text, "id": doc.id}

        return tf.data.Dataset.from_generator(
            gen, output_signature={"targets": tf.TensorSpec((), tf.string), "id": tf.TensorSpec((), tf.string)}
        )

    task = _add_task(name, dataset_fn, ["train"], vocabulary, tokenize=True, overwrite=overwrite)
    _READERS[name] = open_reader
    return task


def register_synthetic_task(corpus: str, operation: str, round_: int, pattern: str, vocabulary: seqio.Vocabulary):
    """Register generator shards (JSONL records {source_id, text, ...}, see generation/synthesize.py) as the task
    ``synpro_<corpus>_<operation>_r<round>``; returns the opener of its document reader."""

    def opener():
        return sources_lib.open_source(pattern, text_field="text", id_field="source_id")

    register_text_task(synthetic_task_name(corpus, operation, round_), opener, vocabulary)
    return opener


def task_documents(name: str):
    """The registered reader of a task (for tests and tools)."""
    if name not in _READERS:
        raise KeyError(f"no synpro task {name!r}; registered: {sorted(_READERS)}")
    return _READERS[name]()


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """What a :class:`PackedMixture` packs: each task's training corpus, its rate, and the mixing knobs."""

    corpora: dict[str, TokenizedCorpus]  # task name -> documents, in mixture order
    rates: dict[str, float]
    eos_id: int
    block_rows: int
    seed: int

    def stream(self, row_len: int) -> MixedStream:
        names = list(self.corpora)
        packed = [PackedStream(self.corpora[n], row_len, self.eos_id, seed=self.seed) for n in names]
        return MixedStream(
            packed, [self.rates[n] for n in names], names=names, block_rows=self.block_rows, seed=self.seed
        )


class PackedMixture(seqio.Mixture):
    """A seqio Mixture whose dataset is the run's packed training rows (see the module docstring).

    Each element is one row of ``L = sequence_length["targets"]`` positions: ``inputs``/``targets`` (next-token
    pairs), ``segment_ids`` and ``positions`` (documents packed back to back never attend to each other),
    ``loss_mask`` (0 on the EOS -> next-document prediction), and ``task`` (index into :attr:`task_names`) and
    ``epoch`` (the epoch of its task's stream the row starts in).

    Order and sharding are fixed by the run's seed: global row ``g`` is the same on every call. Shard ``p`` of
    ``P`` (``shard_info``) yields rows ``p, p + P, p + 2P, ...``, so batch ``s`` of ``b`` rows per host holds
    the global rows ``[s * b * P, (s + 1) * b * P)``. ``stream_starts`` (one row per stream) starts each stream
    there, as a stage that continues another reads it. ``start_row`` starts a shard at its ``start_row``-th row
    without building the ones before it (how the trainer resumes). The stream repeats the data-bound epochs by
    itself, so ``num_epochs`` must be None, and the seqio ``shuffle``/``seed`` arguments have no effect.
    """

    CHUNK_ROWS = 64  # rows built per numpy call: few Python round trips, small latency

    def __init__(self, name: str, spec: MixtureSpec):
        self.spec = spec
        super().__init__(name, [(n, spec.rates[n]) for n in spec.corpora])
        self._streams: dict[int, MixedStream] = {}
        # tf.data may run chunks on its own threads (and an abandoned iterator may still be finishing one), while
        # the streams' epoch and block caches are plain dicts: one chunk at a time.
        self._lock = threading.Lock()

    @property
    def task_names(self) -> list[str]:
        return list(self.spec.corpora)

    def stream(self, seq_len: int) -> MixedStream:
        if seq_len not in self._streams:
            self._streams[seq_len] = self.spec.stream(seq_len + 1)
        return self._streams[seq_len]

    def get_dataset(
        self,
        sequence_length: Mapping[str, int] | None = None,
        split: str = "train",
        use_cached: bool = False,
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        num_epochs: int | None = None,
        start_row: int = 0,
        stream_starts: Sequence[int] | None = None,
        **unused,
    ) -> tf.data.Dataset:
        if split != "train":
            raise ValueError(
                f"{self.name}: only the 'train' split is mixed; validation documents are the "
                f"'validation' split of {self.task_names[0]}"
            )
        if not sequence_length or not sequence_length.get("targets"):
            raise ValueError(f"{self.name}.get_dataset: give sequence_length={{'targets': L}} (the packed row length)")
        if num_epochs is not None:
            raise ValueError(
                f"{self.name}.get_dataset(num_epochs={num_epochs}): the packed stream repeats the "
                "data-bound epochs itself; pass num_epochs=None"
            )
        if use_cached:
            raise ValueError(f"{self.name}: rows are built from the run's tokenized cache; use_cached=False")
        seq_len = int(sequence_length["targets"])
        index, num_shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        if not 0 <= index < num_shards:
            raise ValueError(f"shard_info={shard_info}: index must be in [0, num_shards)")
        if start_row < 0:
            raise ValueError(f"start_row={start_row}: must be >= 0")
        stream = self.stream(seq_len)
        if stream_starts is not None and any(stream_starts):  # a stage that continues another: its stream positions
            stream = stream.starting_at(stream_starts)
        k = self.CHUNK_ROWS

        def chunk(c):
            local = np.arange(int(c) * k, (int(c) + 1) * k, dtype=np.int64)
            with self._lock:
                rows, which = stream.rows(local * num_shards + index)
            batch = rows.training_batch()
            return (*(batch[f] for f in TRAINING_FEATURES), which.astype(np.int32), rows.epochs.astype(np.int32))

        types = [tf.int32, tf.int32, tf.int32, tf.int32, tf.float32, tf.int32, tf.int32]

        def build(c):
            out = tf.numpy_function(chunk, [c], types, stateful=False)
            feats = dict(zip(TRAINING_FEATURES + ("task", "epoch"), out))
            for f in TRAINING_FEATURES:
                feats[f].set_shape([k, seq_len])
            feats["task"].set_shape([k])
            feats["epoch"].set_shape([k])
            return feats

        first = start_row // k
        ds = tf.data.Dataset.range(first, np.iinfo(np.int64).max).map(build).unbatch()
        return ds.skip(start_row - first * k) if start_row % k else ds


def register_mixture(name: str, spec: MixtureSpec, overwrite: bool = True) -> PackedMixture:
    if overwrite and name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    mixture = PackedMixture(name, spec)
    seqio.MixtureRegistry.add_provider(name, mixture)
    return mixture
