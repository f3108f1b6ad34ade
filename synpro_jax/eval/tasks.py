"""Zero-shot multiple-choice tasks as (context, choices, label) items, read from local files.

Known formats (the files of ``../shared/data/eval``; ``DATA_FILES`` gives each task's file under a data root):

- ``arc_easy`` / ``arc_challenge``: HF ``ai2_arc`` JSON lines (``question``, ``choices{text,label}``, ``answerKey``);
  context ``"Question: {question}\\nAnswer:"``, as lm-evaluation-harness formats ARC.
- ``sciq``: HF ``sciq`` JSON lines (``support``, ``question``, ``distractor1..3``, ``correct_answer``); context
  ``"{support}\\nQuestion: {question}\\nAnswer:"`` (support left-stripped, the newline kept when it is empty, as
  lm-evaluation-harness writes it); choices the three distractors, then the answer (label 3).
- ``piqa``: the original ``valid.jsonl`` (``goal``, ``sol1``, ``sol2``) with ``valid-labels.lst`` beside it;
  context ``"Question: {goal}\\nAnswer:"``.
- ``hellaswag``: the text form, optionally ``.bz2``: 6 lines per item (context, gold index, 4 endings), cleaned
  as lm-evaluation-harness cleans HellaSwag (`` [title]`` -> ``. ``, other ``[...]`` tags and double spaces
  dropped). The text form has no separate ``ctx_b``, so lm-eval's capitalisation of it is not applied: scores
  are close to, not identical with, published lm-eval numbers.
- ``jsonl``: any other task, one object per line: ``{"context": str, "choices": [str, ...], "label": int}``.

A choice continues its context after a single space, unless the context already ends in whitespace
(:func:`continuation`). Bad input raises :class:`TaskFormatError` naming the file and line.
"""

from __future__ import annotations

import bz2
from collections.abc import Callable, Iterator
import dataclasses
import json
import re

from etils.epath import Path

from synpro_jax.errors import ConfigError

__all__ = ["MCItem", "TaskFormatError", "continuation", "read_task", "resolve_task", "TASK_READERS", "DATA_FILES"]


@dataclasses.dataclass(frozen=True)
class MCItem:
    context: str
    choices: tuple[str, ...]
    label: int

    def __post_init__(self):
        if len(self.choices) < 2:
            raise ValueError(f"a multiple-choice item needs at least 2 choices, got {len(self.choices)}")
        if not 0 <= self.label < len(self.choices):
            raise ValueError(f"label {self.label} is not an index into {len(self.choices)} choices")


class TaskFormatError(ConfigError):
    """A task file that does not follow its format; the message names the file and line."""


def continuation(context: str, choice: str) -> str:
    """The text scored after ``context``: the choice, after a space unless the context ends in whitespace."""
    return choice if not context or context[-1].isspace() else " " + choice


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFormatError(f"{path}:{number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TaskFormatError(f"{path}:{number}: a JSON object per line expected, got {type(row).__name__}")
            yield number, row


def _field(row: dict, key: str, kind: type, path: Path, number: int):
    if key not in row:
        raise TaskFormatError(f"{path}:{number}: missing field {key!r} (has {sorted(row)})")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TaskFormatError(f"{path}:{number}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _item(path: Path, number: int, context: str, choices, label: int) -> MCItem:
    try:
        return MCItem(context, tuple(choices), label)
    except ValueError as e:
        raise TaskFormatError(f"{path}:{number}: {e}") from None


def read_arc(path: Path) -> list[MCItem]:
    items = []
    for number, row in _json_lines(path):
        question = _field(row, "question", str, path, number)
        choices = _field(row, "choices", dict, path, number)
        texts, labels = choices.get("text"), choices.get("label")
        if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
            raise TaskFormatError(f"{path}:{number}: 'choices' needs lists 'text' and 'label' of one length")
        key = _field(row, "answerKey", str, path, number)
        if key not in labels:
            raise TaskFormatError(f"{path}:{number}: answerKey {key!r} is not among the labels {labels}")
        items.append(_item(path, number, f"Question: {question}\nAnswer:", texts, labels.index(key)))
    return items


def read_sciq(path: Path) -> list[MCItem]:
    items = []
    for number, row in _json_lines(path):
        support = row.get("support") or ""
        question = _field(row, "question", str, path, number)
        choices = [
            _field(row, k, str, path, number) for k in ("distractor1", "distractor2", "distractor3", "correct_answer")
        ]
        context = f"{support.lstrip()}\nQuestion: {question}\nAnswer:"
        items.append(_item(path, number, context, choices, 3))
    return items


def read_piqa(path: Path) -> list[MCItem]:
    """``valid.jsonl``; the labels are read from ``valid-labels.lst`` (or ``<stem>-labels.lst``) beside it."""
    labels_path = path.with_name(f"{path.stem}-labels.lst")
    if not labels_path.exists():
        raise TaskFormatError(f"{path}: PIQA labels not found: expected {labels_path}")
    labels = []
    for number, line in enumerate(labels_path.read_text().splitlines(), 1):
        if line.strip() not in ("0", "1"):
            raise TaskFormatError(f"{labels_path}:{number}: a label is 0 or 1, got {line!r}")
        labels.append(int(line))
    rows = list(_json_lines(path))
    if len(rows) != len(labels):
        raise TaskFormatError(f"{path}: {len(rows)} items but {labels_path} has {len(labels)} labels")
    return [
        _item(
            path,
            number,
            f"Question: {_field(row, 'goal', str, path, number)}\nAnswer:",
            [_field(row, "sol1", str, path, number), _field(row, "sol2", str, path, number)],
            label,
        )
        for (number, row), label in zip(rows, labels)
    ]


def read_hellaswag(path: Path) -> list[MCItem]:
    """6 lines per item: the context, the gold ending's index, then the 4 endings (``.bz2`` is read as is)."""
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise TaskFormatError(
            f"{path}: {len(lines)} lines is not a whole number of 6-line items (context, gold index, 4 endings)"
        )
    items = []
    for start in range(0, len(lines), 6):
        gold = lines[start + 1].strip()
        if not gold.isdigit() or int(gold) > 3:
            raise TaskFormatError(f"{path}:{start + 2}: the gold index is 0..3, got {gold!r}")
        items.append(
            _item(
                path,
                start + 1,
                _clean_hellaswag(lines[start]),
                [_clean_hellaswag(e) for e in lines[start + 2 : start + 6]],
                int(gold),
            )
        )
    return items


def _clean_hellaswag(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def read_jsonl(path: Path) -> list[MCItem]:
    """The generic format: ``{"context": str, "choices": [str, ...], "label": int}`` per line."""
    items = []
    for number, row in _json_lines(path):
        context = _field(row, "context", str, path, number)
        choices = _field(row, "choices", list, path, number)
        if not all(isinstance(c, str) for c in choices):
            raise TaskFormatError(f"{path}:{number}: every choice must be a string")
        items.append(_item(path, number, context, choices, _field(row, "label", int, path, number)))
    return items


TASK_READERS: dict[str, Callable[[Path], list[MCItem]]] = {
    "arc_easy": read_arc,
    "arc_challenge": read_arc,
    "sciq": read_sciq,
    "piqa": read_piqa,
    "hellaswag": read_hellaswag,
    "jsonl": read_jsonl,
}
# Each known task's file under a data root laid out as ../shared/data/eval.
DATA_FILES = {
    "arc_easy": "arc_easy/validation.jsonl",
    "arc_challenge": "arc_challenge/validation.jsonl",
    "sciq": "sciq/validation.jsonl",
    "piqa": "piqa/valid.jsonl",
    "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2",
}


def resolve_task(spec: str, data_root: str | Path | None = None) -> tuple[str, str, Path]:
    """(name, format, path) of a ``--tasks`` entry:

    - ``arc_easy`` (a known task): its file under ``data_root``;
    - ``NAME=PATH``: PATH in NAME's format when NAME is a known task, else in the generic JSONL format;
    - ``PATH.jsonl``: the generic format, named after the file.
    """
    name, _, path = spec.partition("=")
    if path:
        return name, name if name in TASK_READERS and name != "jsonl" else "jsonl", Path(path)
    if spec in DATA_FILES:
        if data_root is None:
            raise ValueError(
                f"task {spec!r}: give the data root that holds {DATA_FILES[spec]} (--data_root), or "
                f"name a file: {spec}=PATH"
            )
        return spec, spec, Path(data_root) / DATA_FILES[spec]
    if spec.endswith(".jsonl"):
        return Path(spec).stem, "jsonl", Path(spec)
    raise ValueError(
        f"task {spec!r}: not a known task ({', '.join(sorted(DATA_FILES))}), a NAME=PATH pair or a "
        ".jsonl file in the generic format"
    )


def read_task(fmt: str, path: str | Path, limit: int | None = None) -> list[MCItem]:
    """The items of a task file in format ``fmt`` (a key of TASK_READERS), the first ``limit`` if given."""
    path = Path(path)
    if fmt not in TASK_READERS:
        raise ValueError(f"unknown task format {fmt!r}; choose one of {sorted(TASK_READERS)}")
    if not path.exists():
        raise FileNotFoundError(f"task file {path} does not exist")
    items = TASK_READERS[fmt](path)
    if not items:
        raise TaskFormatError(f"{path}: no items")
    return items[:limit] if limit else items
