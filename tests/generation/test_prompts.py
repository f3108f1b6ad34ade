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
    text = prompts.OLMO2_CHAT.render([
        {"role": "system", "content": "S"}, {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"},
    ])
    assert text == ("<|endoftext|><|system|>\nS\n<|user|>\nU\n<|assistant|>\nA<|endoftext|>\n"
                    "<|user|>\nV\n<|assistant|>\n")
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
