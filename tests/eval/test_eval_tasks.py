"""Multiple-choice task readers: every format on crafted files, errors that name the file and line, and the
shared evaluation files (skipped when ../shared/data is absent)."""

import bz2
import json

import pytest

from synpro_jax.eval import tasks
from synpro_jax.eval.tasks import MCItem, TaskFormatError, continuation, read_task, resolve_task


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_choice_follows_its_context_after_one_space_unless_the_context_ends_in_whitespace():
    assert continuation("Answer:", "yes") == " yes"
    assert continuation("Answer: ", "yes") == "yes"
    assert continuation("line\n", "yes") == "yes"
    assert continuation("", "yes") == "yes"


def test_each_format_reads_to_context_choices_and_label(tmp_path):
    arc = write_lines(
        tmp_path / "arc.jsonl",
        [
            {
                "id": "a",
                "question": "Which is a gas?",
                "choices": {"text": ["rock", "steam", "ice"], "label": ["A", "B", "C"]},
                "answerKey": "B",
            },
            {"id": "b", "question": "Two?", "choices": {"text": ["1", "2"], "label": ["1", "2"]}, "answerKey": "2"},
        ],
    )
    assert read_task("arc_easy", arc) == [
        MCItem("Question: Which is a gas?\nAnswer:", ("rock", "steam", "ice"), 1),
        MCItem("Question: Two?\nAnswer:", ("1", "2"), 1),
    ]

    sciq = write_lines(
        tmp_path / "sciq.jsonl",
        [
            {
                "question": "What do plants make?",
                "distractor1": "salt",
                "distractor2": "iron",
                "distractor3": "gold",
                "correct_answer": "sugar",
                "support": " Plants photosynthesize. ",
            },
            {
                "question": "Q?",
                "distractor1": "a",
                "distractor2": "b",
                "distractor3": "c",
                "correct_answer": "d",
                "support": "",
            },
        ],
    )
    assert read_task("sciq", sciq) == [
        MCItem(
            "Plants photosynthesize. \nQuestion: What do plants make?\nAnswer:", ("salt", "iron", "gold", "sugar"), 3
        ),
        MCItem("\nQuestion: Q?\nAnswer:", ("a", "b", "c", "d"), 3),
    ]  # lm-eval's layout, empty support included

    piqa = write_lines(
        tmp_path / "valid.jsonl",
        [
            {"goal": "Open a jar", "sol1": "twist", "sol2": "bite"},
            {"goal": "Dry hair", "sol1": "wet it", "sol2": "use a towel"},
        ],
    )
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    assert read_task("piqa", piqa) == [
        MCItem("Question: Open a jar\nAnswer:", ("twist", "bite"), 0),
        MCItem("Question: Dry hair\nAnswer:", ("wet it", "use a towel"), 1),
    ]

    text = (
        "Cooking: A man cracks eggs [title] Step one. he\n2\nsings.\nflies.\nwhisks [header] them.\nsleeps.\n"
        "Sports: She runs. she\n0\nwins.\nmelts.\nboils.\nfreezes.\n"
    )
    (tmp_path / "hs.txt").write_text(text)
    with bz2.open(tmp_path / "hs.txt.bz2", "wt") as f:
        f.write(text)
    want = [
        MCItem("Cooking: A man cracks eggs. Step one. he", ("sings.", "flies.", "whisks them.", "sleeps."), 2),
        MCItem("Sports: She runs. she", ("wins.", "melts.", "boils.", "freezes."), 0),
    ]
    assert read_task("hellaswag", tmp_path / "hs.txt") == want
    assert read_task("hellaswag", tmp_path / "hs.txt.bz2") == want

    generic = write_lines(tmp_path / "mine.jsonl", [{"context": "2 + 2 =", "choices": ["3", "4"], "label": 1}])
    assert read_task("jsonl", generic) == [MCItem("2 + 2 =", ("3", "4"), 1)]
    assert (
        read_task(
            "jsonl",
            write_lines(tmp_path / "more.jsonl", [{"context": "c", "choices": ["a", "b"], "label": 0}] * 5),
            limit=2,
        )
        == [MCItem("c", ("a", "b"), 0)] * 2
    )


@pytest.mark.parametrize(
    "text,message",
    [
        (
            '{"context": "c", "choices": ["a", "b"], "label": 0}\n{"context": "c", "choices": ["a"], "label": 0}\n',
            r"bad.jsonl:2: a multiple-choice item needs at least 2 choices",
        ),
        (
            '{"context": "c", "choices": ["a", "b"], "label": 2}\n',
            r"bad.jsonl:1: label 2 is not an index into 2 choices",
        ),
        ('{"context": "c", "choices": ["a", "b"]}\n', r"bad.jsonl:1: missing field 'label'"),
        ('{"context": "c", "choices": ["a", "b"], "label": true}\n', r"bad.jsonl:1: field 'label' must be int"),
        ('\n{"context": "c",\n', r"bad.jsonl:2: not JSON"),
    ],
)
def test_bad_generic_lines_name_the_file_and_line(tmp_path, text, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    with pytest.raises(TaskFormatError, match=message):
        read_task("jsonl", bad)


def test_bad_files_name_the_file_and_line(tmp_path):
    arc = write_lines(
        tmp_path / "arc.jsonl",
        [{"question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "E"}],
    )
    with pytest.raises(TaskFormatError, match=r"arc.jsonl:1: answerKey 'E' is not among the labels"):
        read_task("arc_easy", arc)
    piqa = write_lines(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}])
    with pytest.raises(TaskFormatError, match="PIQA labels not found"):
        read_task("piqa", piqa)
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(TaskFormatError, match="1 items but .*valid-labels.lst has 2 labels"):
        read_task("piqa", piqa)
    (tmp_path / "hs.txt").write_text("ctx\n7\na\nb\nc\nd\n")
    with pytest.raises(TaskFormatError, match=r"hs.txt:2: the gold index is 0..3"):
        read_task("hellaswag", tmp_path / "hs.txt")
    (tmp_path / "hs.txt").write_text("ctx\n1\na\nb\n")
    with pytest.raises(TaskFormatError, match="not a whole number of 6-line items"):
        read_task("hellaswag", tmp_path / "hs.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_task("jsonl", tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskFormatError, match="no items"):
        read_task("jsonl", tmp_path / "empty.jsonl")


def test_task_specs_resolve_to_a_format_and_a_file(tmp_path):
    assert resolve_task("sciq", tmp_path) == ("sciq", "sciq", tmp_path / "sciq/validation.jsonl")
    assert resolve_task("piqa=/x/valid.jsonl") == ("piqa", "piqa", tasks.Path("/x/valid.jsonl"))
    assert resolve_task("mine=/x/m.jsonl") == ("mine", "jsonl", tasks.Path("/x/m.jsonl"))
    assert resolve_task("/x/other.jsonl") == ("other", "jsonl", tasks.Path("/x/other.jsonl"))
    with pytest.raises(ValueError, match="--data_root"):
        resolve_task("arc_easy")
    with pytest.raises(ValueError, match="not a known task"):
        resolve_task("mmlu")


def test_the_shared_evaluation_files_read_whole(shared_data):
    root = shared_data / "eval"
    counts = {}
    for name in ("arc_easy", "sciq", "piqa", "hellaswag"):
        _, fmt, path = resolve_task(name, root)
        items = read_task(fmt, path)
        counts[name] = len(items)
        assert all(it.context and all(c for c in it.choices) for it in items), name
    assert counts == {"arc_easy": 570, "sciq": 1000, "piqa": 1838, "hellaswag": 10042}
