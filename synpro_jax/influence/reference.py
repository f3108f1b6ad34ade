"""The reference task the probe fine-tunes on (FLAN v2 in the paper): question -> answer, loss on answer tokens.

Readers take FLAN chain-of-thought TSV files (``question<TAB>answer<TAB>rationale`` with literal ``\\n`` inside
fields) and JSONL records ``{"prompt": ..., "completion": ...}``. Bad rows are skipped and reported with
``file:line``. :func:`register_reference_task` registers a seqio Task with ``inputs`` and ``targets`` features.

Two layouts of the encoded examples (prompt, answer, EOS; the loss on answer and EOS tokens only):

- :class:`PackedReference`: the probe's training batches. As in the release, examples are packed back to back
  into full rows, so a step sees as many answer tokens as its rows hold. The examples follow each other in a
  seeded order reshuffled each epoch (:class:`~synpro_jax.data.packing.PackedStream`), each closed by EOS, and
  the rows are consecutive slices of that stream. Two ways to lay a slice out (``packing``):

  - ``"release"`` (the default): as the release trains (OLMo's MemMapDataset over the FLAN token file, no
    ``generate_doc_lengths``): a row is a plain ``seq_len``-token slice, examples attend to the ones before
    them in the row, positions run on, and an example cut by the row's end continues at the next row's start.
    The release's order is its FLAN file's, slices shuffled; here the examples are shuffled and the slices
    read in order: the same kind of rows, not the same rows. How the release tokenized FLAN (the prompt
    format, the separator, whether EOS carries loss) is not in the release, whose flan/input_ids.npy and
    label_mask.npy come prebuilt; OLMo's reader adds no tokens, so its separators are whatever the file holds.
  - ``"separate"``: pretraining's layout, rows of ``seq_len + 1`` tokens with segment ids and positions that
    restart, so packed examples never attend to each other (synpro's earlier probe).
- :func:`encode_examples`: one example per padded row, for per-example reference losses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import json

from etils.epath import Path
import numpy as np

from synpro_jax.data.corpus import TokenizedCorpus, encoder_for
from synpro_jax.data.packing import PackedStream
from synpro_jax.data.sources import ReadReport, expand_paths


@dataclasses.dataclass(frozen=True)
class ReferenceExample:
    id: str
    prompt: str
    completion: str


def _unescape(field: str) -> str:
    return field.replace("\\n", "\n").strip()


class ReferenceSource:
    """Examples from FLAN CoT ``.tsv`` files and/or ``.jsonl`` files of {prompt, completion}."""

    def __init__(self, paths: str | Sequence[str]):
        self.files = expand_paths(paths, "reference source")
        for f in self.files:
            if f.suffix not in (".tsv", ".jsonl"):
                raise ValueError(f"{f}: reference files must be .tsv (FLAN CoT) or .jsonl (prompt/completion)")
        self.report = ReadReport()

    def __iter__(self) -> Iterator[ReferenceExample]:
        for path in self.files:
            with path.open("rb") as fh:
                for lineno, raw in enumerate(fh, start=1):
                    where = f"{path}:{lineno}"
                    try:
                        line = raw.decode("utf-8").rstrip("\r\n")
                    except UnicodeDecodeError as e:
                        self.report.problem("bad_utf8", where, str(e))
                        continue
                    if not line.strip():
                        continue
                    ex = self._parse(path, line, where)
                    if ex is not None:
                        self.report.documents += 1
                        yield ex

    def _parse(self, path: Path, line: str, where: str) -> ReferenceExample | None:
        if path.suffix == ".tsv":
            fields = line.split("\t")
            if len(fields) < 2:
                self.report.problem(
                    "malformed", where, f"expected question<TAB>answer[<TAB>rationale], got {len(fields)} field(s)"
                )
                return None
            question, answer = _unescape(fields[0]), _unescape(fields[1])
            rationale = _unescape(fields[2]) if len(fields) > 2 else ""
            completion = f"{rationale} So the answer is {answer}." if rationale else answer
            prompt = question
        else:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                self.report.problem("malformed", where, f"invalid JSON ({e.msg})")
                return None
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("prompt"), str)
                or not isinstance(record.get("completion"), str)
            ):
                self.report.problem("malformed", where, "needs string fields 'prompt' and 'completion'")
                return None
            prompt, completion = record["prompt"].strip(), record["completion"].strip()
        if not prompt or not completion:
            self.report.problem("empty", where, "empty prompt or completion")
            return None
        return ReferenceExample(f"{path.name}:{where.rsplit(':', 1)[1]}", prompt, completion)


def format_prompt(prompt: str) -> str:
    """The text before the answer: the question and an answer cue the completion follows."""
    return f"Question: {prompt}\nAnswer:"


def _encode(examples: Sequence[ReferenceExample], vocab) -> tuple[list, list]:
    encode = encoder_for(vocab)
    return encode([format_prompt(e.prompt) for e in examples]), encode([" " + e.completion for e in examples])


PACKINGS = ("release", "separate")  # how PackedReference lays packed examples into rows (module docstring)


def check_packing(packing: str, where: str = "packing") -> None:
    if packing not in PACKINGS:
        raise ValueError(f"{where}={packing!r}: must be one of {PACKINGS}")


class PackedReference:
    """Reference examples packed into full training rows (see the module docstring).

    ``batch(step, rows)`` is a pure function of (seed, step): rows ``[step * rows, (step + 1) * rows)`` of the
    endless packed stream, as inputs/targets/segment_ids/positions/loss_mask ``[rows, seq_len]``. A target
    counts when it is an answer token (or the closing EOS); with ``packing="separate"`` it must also belong to
    the same example as its input token, and with ``"release"`` the row's last input has no target.
    ``row_len`` is the tokens a row takes from the stream: ``seq_len`` (release) or ``seq_len + 1``.
    """

    def __init__(
        self, examples: Sequence[ReferenceExample], vocab, seq_len: int, seed: int = 0, packing: str = "release"
    ):
        check_packing(packing)
        if not examples:
            raise ValueError("reference task: no examples to pack")
        if seq_len < (2 if packing == "release" else 1):  # a release row is its own inputs: 2 tokens at least
            raise ValueError(
                f"reference seq_len={seq_len}: must be >= {2 if packing == 'release' else 1} with packing={packing!r}"
            )
        prompts, answers = _encode(examples, vocab)
        ids = [e.id for e in examples]
        docs = [np.asarray(list(p) + list(a), np.int32) for p, a in zip(prompts, answers)]
        answer = [np.asarray([0] * len(p) + [1] * len(a), np.int32) for p, a in zip(prompts, answers)]
        self.seq_len, self.seed, self.num_examples, self.packing = seq_len, seed, len(examples), packing
        self.row_len = seq_len if packing == "release" else seq_len + 1
        self.answer_tokens = int(sum(len(a) + 1 for a in answers))  # with each EOS, per epoch
        self.epoch_tokens = int(sum(len(d) + 1 for d in docs))
        # Two streams over corpora of equal lengths share their layout: the second carries the answer mask
        # (EOS "token" 1: the closing EOS is an answer token).
        self._tokens = PackedStream(TokenizedCorpus.from_token_lists(docs, ids), self.row_len, vocab.eos_id, seed)
        self._answer = PackedStream(TokenizedCorpus.from_token_lists(answer, ids), self.row_len, 1, seed)

    def epoch_order(self, epoch: int) -> list[str]:
        """The example ids in the order epoch ``epoch`` lays them out."""
        return self._tokens.epoch_doc_order(epoch)

    def rows(self, indices) -> dict[str, np.ndarray]:
        rows = self._tokens.rows(indices)
        answer = self._answer.rows(indices).tokens.astype(np.float32)
        if self.packing == "separate":
            batch = rows.training_batch()  # its loss_mask already drops predictions across examples
            batch["loss_mask"] = batch["loss_mask"] * answer[:, 1:]
            return batch
        batch = rows.concatenated_batch()  # its loss_mask drops only the last position (no next token)
        batch["loss_mask"][:, :-1] *= answer[:, 1:]
        return batch

    def batch(self, step: int, rows: int) -> dict[str, np.ndarray]:
        if rows < 1 or step < 0:
            raise ValueError(f"reference batch step={step}, rows={rows}: need step >= 0 and rows >= 1")
        return self.rows(np.arange(step * rows, (step + 1) * rows))


def encode_examples(examples: Sequence[ReferenceExample], vocab, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, seq_len + 1] token rows (prompt, completion, EOS, then padding) and their loss masks (1 on completion
    and EOS tokens only). Rows longer than seq_len + 1 keep the end of the prompt and as much answer as fits."""
    prompts, answers = _encode(examples, vocab)
    length = seq_len + 1
    tokens = np.full((len(examples), length), vocab.pad_id, np.int32)
    mask = np.zeros((len(examples), length), np.float32)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        a = list(a) + [vocab.eos_id]
        a = a[: length - 1]  # keep at least one prompt token
        p = list(p)[-(length - len(a)) :]
        row = p + a
        tokens[i, : len(row)] = row
        mask[i, len(p) : len(row)] = 1.0
    return tokens, mask


def register_reference_task(name: str, paths: str | Sequence[str], vocab):
    """A seqio Task ``name`` with ``inputs`` (prompt) and ``targets`` (completion) over ``vocab``."""
    import seqio  # seqio and TensorFlow take seconds: only this task needs them, and the probe imports this module
    import tensorflow as tf  # as seqio above

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        def gen():
            for ex in ReferenceSource(paths):
                yield {"inputs": format_prompt(ex.prompt), "targets": ex.completion}

        return tf.data.Dataset.from_generator(
            gen, output_signature={"inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string)}
        )

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False), "targets": seqio.Feature(vocab, add_eos=True)},
    )
