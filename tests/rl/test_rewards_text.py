"""format, length, structure_local and faithfulness_lexical on crafted completions with known values, and their
error paths (a completion that is not text, a source with no words, a group with two sources)."""

import numpy as np
import pytest

from synpro_jax.generation.prompts import HEADINGS
from synpro_jax.rl.rewards import RewardError, RewardInputs, RewardSuite, make_reward
from synpro_jax.rl.rewards.structure import layout

H, R = HEADINGS["rephrase"], HEADINGS["reformat"]


def run(name, completions, sources, operation="rephrase", **kw):
    if isinstance(sources, str):
        sources = [sources] * len(completions)
    return make_reward(name, **kw)(RewardInputs(operation, sources, completions, np.zeros(len(completions), int)))


def test_format_counts_headings_of_both_operations():
    got = run(
        "format",
        [
            f"{H}\nText.",
            "Text without a heading.",
            f"{H}\nA\n{H}\nB",
            f"{H}\n{R}\n- Topic: a",
            "**here is the rewritten document**\nText.",
        ],
        "src",
    )
    np.testing.assert_array_equal(got, [1, 0, 0, 0, 1])
    assert run("format", [f"{R}\n- Topic: t Content: c"], "src", "reformat")[0] == 1


def test_length_is_on_the_answer_after_the_heading():
    src = "s" * 100
    got = run("length", [f"{H}\n" + "a" * 125, f"{H}\n" + "a" * 126, "a" * 500, f"{H}\n  " + "a" * 125 + "  "], src)
    # no heading: empty answer, which passes as in the release (format is what penalises it)
    np.testing.assert_array_equal(got, [1, 0, 1, 1])
    assert run("length", [f"{H}\n" + "a" * 150], src, max_ratio=1.5)[0] == 1
    with pytest.raises(ValueError, match="max_ratio=0"):
        make_reward("length", max_ratio=0)


@pytest.mark.parametrize("name", ["format", "length", "structure_local", "faithfulness_lexical"])
def test_a_completion_that_is_not_text_is_a_reward_error(name):
    with pytest.raises(RewardError, match="completion 1 is a NoneType, not text"):
        run(name, [f"{H}\nok", None], "The source text.")
    suite = RewardSuite({name: make_reward(name)}, {name: 1.0}, fallbacks={name: -1.0})
    out = suite(RewardInputs("rephrase", ["src"] * 2, [f"{H}\nok", None], np.zeros(2, int)))
    assert out.failures == {name: 2} and np.all(out.values[name] == -1.0)


def test_a_group_with_two_sources_is_refused():
    with pytest.raises(ValueError, match="completion 1 has another source than the rest of group 0"):
        run("structure_local", [f"{H}\na", f"{H}\nb"], ["one source", "another"])


def test_layout_counts():
    text = "# Title\n\nIntro para.\n\n- one\n- two\n3. three\n\n```\ncode\n```\n\n| a | b |\n|---|---|\n"
    lay = layout(text)
    assert (lay.headings, lay.items, lay.code_blocks, lay.table_rows) == (1, 3, 1, 2)
    assert lay.paragraphs == 5


def test_structure_keeps_or_breaks_the_layout():
    prose = "First paragraph here.\n\nSecond paragraph here."
    listed = "Intro.\n\n- alpha\n- beta\n- gamma\n- delta"
    cases = [
        (prose, "Para A rewritten.\n\nPara B rewritten.", 1),
        (prose, "- A rewritten\n- B rewritten", 0),  # a list where there was prose
        (prose, "One.\n\nTwo.\n\nThree.\n\nFour.\n\nFive.", 0),  # 2 -> 5 paragraphs: past the factor 2
        (prose, "One.\n\nTwo.\n\nThree.\n\nFour.", 1),  # 2 -> 4: within it
        (listed, "Start.\n\n* a\n* b\n* c\n* d", 1),
        (listed, "Start.\n\n* all four items in one", 0),  # 4 items -> 1
        (listed, "Start. Alpha, beta, gamma and delta.", 0),  # the list became prose
        ("Look:\n\n```\nx = 1\n```", "Look:\n\nx = 1", 0),  # code fence dropped
        ("## Heading\n\nBody.", "## Heading\n\nBody rewritten.", 1),
        (prose, "", 0),  # empty answer: no layout
    ]
    got = [run("structure_local", [f"{H}\n{a}"], s)[0] for s, a, _ in cases]
    np.testing.assert_array_equal(got, [c for *_, c in cases])
    with pytest.raises(ValueError, match="max_ratio=0.5"):
        make_reward("structure_local", max_ratio=0.5)


SOURCE = "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall."
ENTRIES = (
    f"{R}\n- Topic: Eiffel Tower location Content: The Eiffel Tower stands in Paris.\n"
    "- Topic: Tower completed Content: It was completed in 1889.\n"
    "- Topic: Moon landing Content: Apollo 11 landed on the Moon in 1969."
)


def test_faithfulness_is_the_share_of_supported_entries():
    got = run(
        "faithfulness_lexical",
        [ENTRIES, f"{R}\nno entries here", "- Topic: a Content: b", f"{R}\n"],
        SOURCE,
        "reformat",
    )
    np.testing.assert_allclose(got, [2 / 3, 0, 0, 0], atol=1e-6)  # no heading or no entry parses: 0
    # only the source's first `window` characters count: the completion year lies past 40 characters
    np.testing.assert_allclose(
        run("faithfulness_lexical", [ENTRIES], SOURCE, "reformat", window=40), [1 / 3], atol=1e-6
    )
    # a stricter content threshold rejects the first entry too ("stands" is not in the source)
    np.testing.assert_allclose(
        run("faithfulness_lexical", [ENTRIES], SOURCE, "reformat", content_support=0.9), [1 / 3], atol=1e-6
    )


def test_faithfulness_errors():
    with pytest.raises(RewardError, match="a source has no words in its first 3000 characters"):
        run("faithfulness_lexical", [ENTRIES], "!!! ... ???", "reformat")
    with pytest.raises(ValueError, match="content_support=1.5"):
        make_reward("faithfulness_lexical", content_support=1.5)
