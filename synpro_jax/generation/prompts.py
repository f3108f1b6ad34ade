"""The generators' instructions, the OLMo-2 chat template, and parsers for what the generators write back.

Two operations (see docs/reference.md): *rephrase* rewrites a document as clean prose, keeping every fact and
adding none; *reformat* turns it into at most eight ``- Topic: ... Content: ...`` entries. Each answer opens with
a fixed heading, so the format reward can check it and the parsers can find where the answer starts.

Parsers never raise on model output: a missing heading gives empty text, an entry without a content part is
dropped, and the rewards score whatever came back.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import re

OPERATIONS = ("rephrase", "reformat")
MAX_ENTRIES = 8
MAX_SOURCE_CHARS = 7_000  # the release's cut for RL prompts

# Bump whenever the instructions, the system prompt, the chat template or the way a long source is cut change:
# synthesis refuses to resume a shard written under another version. History: 1, sources cut after
# max_source_chars at a sentence boundary; 2, the middle of a long source is cut (characters, then tokens); 3, the
# heading is matched as whole words only (what a record keeps changes with it).
PROMPT_VERSION = 3
# Stands where the middle of an over-long source was cut out (the release puts "..." there).
CUT_MARKER = " ... "

SYSTEM_PROMPT = "You are a careful, helpful assistant. Follow the user's instructions exactly."

HEADINGS = {
    "rephrase": "Here is the rewritten document:",
    "reformat": "Here are the structured entries drawn from the document:",
}

ENTRY_KINDS = ("factual", "analytical", "conceptual", "comparative", "problem-solving")

_INSTRUCTIONS = {
    "rephrase": (
        "Rewrite the document below in clear, well-written English.\n"
        "- Keep every meaningful fact, name, number, term, example and step of reasoning.\n"
        "- Leave out web clutter such as navigation links, menus, advertisements, footers and decorative lines.\n"
        "- Do not add facts, opinions or explanations that the document does not contain.\n"
        "- Keep the document's own order and layout where it has one (lists stay lists, steps stay steps).\n"
        'Start your answer with the line "{heading}" and put nothing after the rewritten document.\n\n'
        "Document:\n{document}"
    ),
    "reformat": (
        "Turn the document below into at most {max_entries} self-contained entries that teach what it says.\n"
        "- Each entry is one line of the form: - Topic: <a short title> Content: <what the document says about "
        "it>\n"
        "- Vary the kind of entry: {kinds}.\n"
        "- Use only information found in the document; do not invent details.\n"
        'Start your answer with the line "{heading}" and write nothing after the entries.\n\n'
        "Document:\n{document}"
    ),
}


def _check_operation(operation: str) -> None:
    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r}: choose one of {OPERATIONS}")


def cut_at_sentence(text: str, max_chars: int = MAX_SOURCE_CHARS) -> str:
    """``text`` if it fits, else its longest prefix of at most ``max_chars`` that ends a sentence or line.

    Falls back to the last word boundary, and to a hard cut only for a single over-long word.
    """
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s)|\n", head + " ")]
    ends = [e for e in ends if e <= max_chars]
    if ends and ends[-1] >= max_chars // 4:  # a boundary that keeps a fair share of the budget
        return head[: ends[-1]].rstrip()
    space = head.rfind(" ")
    return head[:space].rstrip() if space > 0 else head


def middle_cut(text: str, max_chars: int) -> tuple[str, str | None]:
    """(head, tail) of ``text`` with at most ``max_chars`` characters between them, its middle left out (the head
    gets the odd character); (text, None) when it fits. The release, too, cuts characters before it cuts tokens."""
    if len(text) <= max_chars:
        return text, None
    head = (max_chars + 1) // 2
    return text[:head], text[len(text) - (max_chars - head) :]


def instruction(operation: str, document: str, max_source_chars: int | None = MAX_SOURCE_CHARS) -> str:
    """The user turn asking for ``operation`` on ``document`` (cut at a sentence boundary to max_source_chars;
    None: not cut)."""
    _check_operation(operation)
    document = document.strip()
    return _INSTRUCTIONS[operation].format(
        heading=HEADINGS[operation],
        document=document if max_source_chars is None else cut_at_sentence(document, max_source_chars),
        max_entries=MAX_ENTRIES,
        kinds=", ".join(ENTRY_KINDS),
    )


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """OLMo-2 Instruct's (Tulu-3 style) chat format: ``<|system|>``/``<|user|>``/``<|assistant|>`` turns, each
    role tag on its own line, a BOS token first and EOS after each assistant answer."""

    bos: str = "<|endoftext|>"
    eos: str = "<|endoftext|>"

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        out = [self.bos]
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content", "")
            if role in ("system", "user"):
                out.append(f"<|{role}|>\n{content}\n")
            elif role == "assistant":
                out.append(f"<|assistant|>\n{content}{self.eos}" + ("\n" if i < len(messages) - 1 else ""))
            else:
                raise ValueError(f"chat message {i}: role {role!r} is not system, user or assistant")
        if add_generation_prompt:
            out.append("<|assistant|>\n")
        return "".join(out)


OLMO2_CHAT = ChatTemplate()


@dataclasses.dataclass(frozen=True)
class ChatMLTemplate:
    """ChatML, Qwen's chat format: each turn ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, no BOS; the
    generation prompt opens the assistant turn. ``empty_think``: the opened turn then holds an empty
    ``<think>\\n\\n</think>\\n\\n`` block, as Qwen3's template writes it with ``enable_thinking=False`` (the model
    answers without reasoning first)."""

    empty_think: bool = False

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        out = []
        for i, m in enumerate(messages):
            role = m.get("role")
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"chat message {i}: role {role!r} is not system, user or assistant")
            out.append(f"<|im_start|>{role}\n{m.get('content', '')}<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if self.empty_think else ""))
        return "".join(out)


CHATML = ChatMLTemplate()
QWEN3_CHAT = ChatMLTemplate(empty_think=True)  # Qwen3 with thinking off


def chat_prompt(
    operation: str,
    document: str,
    template: ChatTemplate = OLMO2_CHAT,
    system: str = SYSTEM_PROMPT,
    max_source_chars: int | None = MAX_SOURCE_CHARS,
) -> str:
    """The full generator prompt text: system prompt, the instruction, and the assistant tag to continue from."""
    return template.render(
        [
            {"role": "system", "content": system},
            {"role": "user", "content": instruction(operation, document, max_source_chars)},
        ]
    )


_SLOT = "\x00SOURCE\x00"


def prompt_parts(operation: str, template: ChatTemplate = OLMO2_CHAT, system: str = SYSTEM_PROMPT) -> tuple[str, str]:
    """The chat prompt text before and after the document, so a source can be tokenized (and cut) on its own:
    ``before + document.strip() + after == chat_prompt(operation, document, template, system, None)``."""
    text = chat_prompt(operation, _SLOT, template, system, None)
    if text.count(_SLOT) != 1:
        raise ValueError("the system prompt or chat template contains the document slot marker")
    before, after = text.split(_SLOT)
    return before, after


def fit_source(
    before: Sequence[int],
    head: Sequence[int],
    tail: Sequence[int] | None,
    after: Sequence[int],
    marker: Sequence[int],
    max_tokens: int,
) -> tuple[list[int], int] | None:
    """Prompt ids ``before + source + after`` of at most ``max_tokens``, and how many source tokens were cut out.

    The source is ``head``, or ``head`` and ``tail`` when its middle was already cut out (in characters); then
    ``marker`` joins them. When the prompt is too long, the middle of the source is replaced by ``marker`` (head
    and tail kept, the head getting the odd token, the gap spanning an earlier cut) so the prompt is exactly
    ``max_tokens`` long. None when even an empty source does not fit. With no room for the marker, the source's
    first tokens alone fill what is left.
    """
    room = max_tokens - len(before) - len(after)
    if room < 0:
        return None
    src = [*head, *(tail or ())]
    n = len(src)
    whole = [*head, *marker, *tail] if tail is not None else src
    if len(whole) <= room:
        return [*before, *whole, *after], 0
    if room <= len(marker):
        return [*before, *src[:room], *after], n - room
    keep = room - len(marker)
    first = (keep + 1) // 2
    if tail is not None:  # one gap: it must cover the join of head and tail
        first = min(first, len(head))
        first = max(first, keep - len(tail))
    return [*before, *src[:first], *marker, *src[n - (keep - first) :], *after], n - keep


@dataclasses.dataclass(frozen=True)
class Answer:
    """A generator output split at its heading. ``headings`` counts every known heading found (the format reward
    wants exactly one); ``text`` is what follows the first heading, empty when there is none."""

    headings: int
    text: str

    @property
    def ok(self) -> bool:
        return self.headings == 1 and bool(self.text)


def _heading_pattern(heading: str) -> re.Pattern:
    # Tolerate the model's common variations: case, surrounding markdown emphasis, spacing, a missing colon.
    # Whole words only: "...the rewritten documents" or "...documented" is not the heading (a policy under the
    # format reward learns such near misses).
    words = heading.rstrip(":").split()
    return re.compile(r"[*_#\s]*(?<![\w])" + r"\s+".join(map(re.escape, words)) + r"(?![\w])\s*:?[*_]*", re.IGNORECASE)


_PATTERNS = {op: _heading_pattern(h) for op, h in HEADINGS.items()}


def parse_answer(output: str, operation: str) -> Answer:
    """Split ``output`` at the operation's heading. Counts headings of every operation, never raises."""
    _check_operation(operation)
    output = output if isinstance(output, str) else ""
    count = sum(len(p.findall(output)) for p in _PATTERNS.values())
    match = _PATTERNS[operation].search(output)
    if match is None:
        return Answer(count, "")
    return Answer(count, output[match.end() :].strip())


@dataclasses.dataclass(frozen=True)
class Entry:
    topic: str
    content: str

    def render(self) -> str:
        return f"- Topic: {self.topic} Content: {self.content}"


_ENTRY_START = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*\**\s*topic\s*\**\s*:\s*\**", re.IGNORECASE | re.MULTILINE)
_CONTENT = re.compile(r"\**\s*content\s*\**\s*:\s*\**", re.IGNORECASE)


def parse_entries(text: str) -> list[Entry]:
    """(topic, content) pairs from a reformat answer, in order.

    An entry starts at a line ``- Topic:`` (any bullet, numbering, bold or case) and runs to the next such line,
    so content may wrap over lines. Entries with an empty topic or without a ``Content:`` part are dropped.
    """
    if not isinstance(text, str):
        return []
    starts = [m for m in _ENTRY_START.finditer(text)]
    entries = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[m.end() : end]
        split = _CONTENT.search(body)
        if split is None:
            continue
        topic = " ".join(body[: split.start()].split()).strip(" -*")
        content = " ".join(body[split.end() :].split()).strip()
        if topic and content:
            entries.append(Entry(topic, content))
    return entries


def synthetic_text(output: str, operation: str) -> str:
    """The pretraining text kept from a generator output: the rephrased prose, or the parsed entries one per line
    (at most MAX_ENTRIES). Empty when nothing usable came back."""
    answer = parse_answer(output, operation)
    if operation == "rephrase":
        return answer.text
    return "\n".join(e.render() for e in parse_entries(answer.text)[:MAX_ENTRIES])
