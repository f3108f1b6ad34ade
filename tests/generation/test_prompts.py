"""Instructions, the chat template, and parsers that take messy model output without raising."""

import pytest

from synpro_jax.generation import prompts
from synpro_jax.generation.prompts import HEADINGS, Entry, parse_answer, parse_entries, synthetic_text


def test_instructions_carry_heading_and_document():
    for op in prompts.OPERATIONS:
        text = prompts.instruction(op, "  The cat sat on the mat.  ")
        assert HEADINGS[op] in text and text.endswith("Document:\nThe cat sat on the mat.")
    assert "at most 8" in prompts.instruction("reformat", "x")
    with pytest.raises(ValueError, match="operation 'summarize'"):
        prompts.instruction("summarize", "x")


def test_olmo2_chat_template_layout():
    text = prompts.OLMO2_CHAT.render(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "V"},
        ]
    )
    assert text == (
        "<|endoftext|><|system|>\nS\n<|user|>\nU\n<|assistant|>\nA<|endoftext|>\n<|user|>\nV\n<|assistant|>\n"
    )
    full = prompts.chat_prompt("rephrase", "Doc.")
    assert full.startswith("<|endoftext|><|system|>\n" + prompts.SYSTEM_PROMPT) and full.endswith("<|assistant|>\n")
    with pytest.raises(ValueError, match="role 'tool'"):
        prompts.OLMO2_CHAT.render([{"role": "tool", "content": "x"}])


def test_cut_at_sentence():
    text = "One fact here. Another fact there! A third, longer sentence that runs past the cut."
    assert prompts.cut_at_sentence(text, 1000) == text
    assert prompts.cut_at_sentence(text, 40) == "One fact here. Another fact there!"
    assert prompts.cut_at_sentence("word " * 20, 23) == "word word word word"  # no sentence end: word boundary
    assert prompts.cut_at_sentence("x" * 50, 10) == "x" * 10  # one long word: hard cut
    assert len(prompts.instruction("rephrase", "Short. " * 3000)) < prompts.MAX_SOURCE_CHARS + 1000


def test_parse_answer_finds_heading_variants():
    ok = parse_answer("Sure!\nHere is the rewritten document:\n\nClean text.", "rephrase")
    assert ok.headings == 1 and ok.text == "Clean text." and ok.ok
    bold = parse_answer("**here is the REWRITTEN document**\nBody", "rephrase")
    assert bold.text == "Body" and bold.headings == 1
    assert parse_answer("no heading at all", "rephrase") == prompts.Answer(0, "")
    for near_miss in (
        "Here is the rewritten documents: x",
        "Here is the rewritten documented x",
        "There is the rewritten document: x",
    ):
        assert parse_answer(near_miss, "rephrase").headings == 0, near_miss
    twice = parse_answer(f"{HEADINGS['rephrase']} a\n{HEADINGS['reformat']} b", "rephrase")
    assert twice.headings == 2 and not twice.ok
    for junk in ("", None, 42, "\x00\uffff" * 10):
        assert parse_answer(junk, "reformat").text == ""


def test_parse_entries_messy_output():
    text = (
        "- Topic: Photosynthesis Content: Plants turn light into sugar.\n"
        "* **Topic:** Chlorophyll **Content:** The green pigment\n  that absorbs light.\n"
        "3. topic: Missing content part\n"
        "- Topic:  Content: no topic\n"
        "Some chatter the model added.\n"
        "- TOPIC: Oxygen CONTENT: A by-product."
    )
    assert parse_entries(text) == [
        Entry("Photosynthesis", "Plants turn light into sugar."),
        Entry("Chlorophyll", "The green pigment that absorbs light."),
        Entry("Oxygen", "A by-product."),
    ]
    assert parse_entries("") == [] and parse_entries(None) == [] and parse_entries("Topic Content") == []


def test_synthetic_text_keeps_at_most_eight_entries():
    body = "\n".join(f"- Topic: T{i} Content: C{i}" for i in range(12))
    out = synthetic_text(f"{HEADINGS['reformat']}\n{body}", "reformat")
    assert out.splitlines() == [f"- Topic: T{i} Content: C{i}" for i in range(8)]
    assert synthetic_text("the model forgot the heading", "rephrase") == ""


def test_prompt_parts_surround_the_document():
    for op in prompts.OPERATIONS:
        before, after = prompts.prompt_parts(op)
        doc = "A long document. " * 500
        assert before + doc.strip() + after == prompts.chat_prompt(op, doc, max_source_chars=None)
        assert before.endswith("Document:\n") and after == "\n<|assistant|>\n"


def test_prompt_version_pins_the_prompt_text():
    """Changing an instruction, the system prompt, the template or the cut marker changes what synthesis
    generates: bump PROMPT_VERSION (then update the digest here) so old shards are not resumed with it."""
    import hashlib
    import json

    text = json.dumps([prompts.prompt_parts(op) for op in prompts.OPERATIONS] + [prompts.CUT_MARKER])
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert (prompts.PROMPT_VERSION, digest) == (3, PINNED_PROMPT_DIGEST), "bump prompts.PROMPT_VERSION"


PINNED_PROMPT_DIGEST = "f79623ed0b3466ab"


def test_middle_cut_keeps_head_and_tail():
    assert prompts.middle_cut("abcdef", 6) == ("abcdef", None)
    assert prompts.middle_cut("abcdefghij", 5) == ("abc", "ij")  # head gets the odd character
    assert prompts.middle_cut("abcdefghij", 1) == ("a", "")


def test_fit_source_cuts_the_middle_to_exactly_the_budget():
    before, after, marker = [-1, -2, -3], [-4, -5], [0]
    src = list(range(1, 101))
    # Fits: untouched.
    assert prompts.fit_source(before, src, None, after, marker, 105) == ([*before, *src, *after], 0)
    # Too long by one: the middle goes, the marker stands in it, the prompt is exactly the budget.
    ids, cut = prompts.fit_source(before, src, None, after, marker, 104)
    assert len(ids) == 104 and cut == 2
    assert ids == [*before, *range(1, 50), 0, *range(52, 101), *after]
    for budget in range(7, 105):
        ids, cut = prompts.fit_source(before, src, None, after, marker, budget)
        keep = budget - 6
        assert len(ids) == budget and cut == 100 - keep
        assert ids[3 : 3 + (keep + 1) // 2] == src[: (keep + 1) // 2]  # head
        assert ids[len(ids) - 2 - keep // 2 : len(ids) - 2] == src[100 - keep // 2 :]  # tail
    # No room for the marker: the source's first tokens. Room for the chat text only: an empty source. None (a
    # too_long record) only when even that does not fit.
    assert prompts.fit_source(before, src, None, after, marker, 6) == ([*before, 1, *after], 99)
    assert prompts.fit_source(before, src, None, after, marker, 5) == ([*before, *after], 100)
    assert prompts.fit_source(before, src, None, after, marker, 4) is None
    assert prompts.fit_source(before, [], None, after, marker, 4) is None


def test_fit_source_after_a_character_cut_leaves_one_gap():
    before, after, marker = [-1], [-2], [0]
    head, tail = list(range(1, 11)), list(range(101, 131))  # the character cut already joined these
    assert prompts.fit_source(before, head, tail, after, marker, 100) == ([-1, *head, 0, *tail, -2], 0)
    ids, cut = prompts.fit_source(before, head, tail, after, marker, 23)  # room 21: 20 kept around one marker
    assert ids == [-1, *head, 0, *tail[20:], -2] and cut == 20  # the gap covers the join: 10 + 10 kept
    ids, cut = prompts.fit_source(before, head, tail, after, marker, 13)
    assert ids == [-1, *head[:5], 0, *tail[25:], -2] and cut == 30
    ids, cut = prompts.fit_source(before, [1, 2], tail, after, marker, 23)  # a short head: the tail keeps more
    assert ids == [-1, 1, 2, 0, *tail[12:], -2] and cut == 12
