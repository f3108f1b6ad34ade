"""A built-in world of synthetic biographies: the demo's organic data, reference task, evaluation and the
generators' prior skill, all made from a seed with no files and no downloads.

After the controlled-knowledge experiments of Allen-Zhu and Li ("Physics of Language Models, Part 3.1", 2023):
a model trained on one biography per person, repeated for many epochs, stores the facts poorly; the same model
trained on several rewritings of each biography extracts them well. That is SynPro's thesis in miniature, and
every part of it can be measured exactly here:

- **People.** Each person has a unique full name and six attributes: birth date, birth city, university, major,
  employer and the employer's city.
- **Organic corpus.** One biography per person: one sentence per attribute, each from a template drawn at random
  (``TEMPLATES``), in a random order after the first, which names the person in full.
- **Evaluation in wording no training text uses.** Each attribute has sentence frames reserved for evaluation
  (``VALIDATION_TEMPLATES``, ``TEST_TEMPLATES``, ``QA_TEMPLATES``): no organic, oracle, teaching or reference
  text is written with them (:func:`check_reserved` asserts it when this module loads). Held-out biographies of
  the same people are written in them: validation (which the plateau and best-checkpoint choices read) and test
  (what the result table reports) in different frames. QA asks 4-way cloze questions in a third frame that
  does not start with the name, as a reformat entry's content does: "The city where Kira Teal Lindqvist was
  born is" ... "Porto." among four cities (chance 0.25).
- **Reference task** (the probe's FLAN): question/answer pairs about a subset of the people; QA accuracy is then
  measured on the others.
- **The generators' prior skill** (an instruct model's, in the release): supervised rewriting pairs built from a
  *disjoint* population, so the generator knows how to rephrase and reformat but none of the organic people.
- **Faithfulness** is exact: :func:`fact_check` finds which of the person's facts a rewrite states and which
  values of the same kind it states wrongly.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import re

import numpy as np

from synpro_jax.generation import prompts

__all__ = [
    "ATTRIBUTES",
    "TEMPLATES",
    "WORDINGS",
    "Person",
    "World",
    "make_world",
    "fact_check",
    "FactCheck",
    "split_sentences",
    "verbatim",
]

# Bump when the world a seed makes changes (people, templates, texts): written worlds record it.
VERSION = 4

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")

FIRST = (
    "Anya Bruno Celia Dario Elena Farid Greta Hugo Ines Jonas Kaia Luca Mira Nils Olga Pavel Rosa Sven Tara Uli "
    "Vera Wim Yara Zane Alma Boris Clara Dmitri Edda Felix Gaia Henrik Ilse Jasper Kira Lionel Maren Oskar Petra "
    "Quentin"
).split()
MIDDLE = "Ash Bay Cove Dale Elm Fern Glen Hale Ivy Jade Kent Lark Moss Nash Oak Pine Reed Sage Teal Wren".split()
LAST = (
    "Abbott Brandt Castell Dorsey Ekholm Falk Garrow Holm Ivers Jansky Keller Lindqvist Moreau Norling Ortega "
    "Pell Quist Rask Sorel Thorne Ulman Varga Weller Yates Zorn Alder Bexley Crane Drummond Ellery"
).split()
MONTHS = ("January February March April May June July August September October November December").split()
BIRTH_CITIES = (
    "Aberdeen Bergen Cordoba Dresden Eindhoven Florence Ghent Hamburg Innsbruck Jaipur Kyoto Lisbon "
    "Malmo Nantes Oslo Porto Quebec Riga Seville Tampere"
).split()
# Work cities are another set: each attribute's values are then of their own kind, which a small generator
# learns to find and copy from a source far sooner than a value it must tell apart by its sentence.
WORK_CITIES = (
    "Utrecht Valencia Warsaw Xiamen York Zagreb Antwerp Bilbao Cardiff Dublin Geneva Helsinki Krakow Lyon "
    "Munich Naples Prague Salzburg Toulouse Vienna"
).split()
CITIES = BIRTH_CITIES + WORK_CITIES
UNIVERSITIES = tuple(
    f"{p} {k}"
    for p, k in [
        ("Northfield", "University"),
        ("Eastbrook", "College"),
        ("Westmoor", "Institute"),
        ("Southgate", "University"),
        ("Riverside", "Polytechnic"),
        ("Highland", "University"),
        ("Lakeshore", "College"),
        ("Stonebridge", "Institute"),
        ("Greenvale", "University"),
        ("Ironwood", "College"),
        ("Silverton", "University"),
        ("Redcliff", "Institute"),
        ("Oakhurst", "University"),
        ("Brightwater", "College"),
        ("Kingsmere", "University"),
        ("Foxhollow", "Institute"),
    ]
)
MAJORS = (
    "astronomy biology chemistry economics geology history linguistics mathematics music philosophy physics "
    "psychology sociology statistics architecture botany"
).split()
EMPLOYERS = (
    "Arcwell Bluepeak Cobaltix Driftline Emberly Fathom Glimmer Harbora Inkstone Junipero Keystar Lumora "
    "Meridox Northwind Orbitra Pallasys Quarryton Ravenstack Solvane Tidewell"
).split()

# One sentence per attribute; {n} is the subject (the full name in the first sentence, a pronoun or the name
# after it), {v} the value. A person's organic biography draws one template per attribute; the held-out
# biographies use only the others.
TEMPLATES = {
    "birth_date": (
        "{n} was born on {v}.",
        "{n} came into the world on {v}.",
        "{n} celebrates a birthday on {v}.",
        "The birth of {n} took place on {v}.",
        "{n} first saw daylight on {v}.",
    ),
    "birth_city": (
        "{n} was born in {v}.",
        "{n} spent early childhood in {v}.",
        "{n} grew up in {v}.",
        "The hometown of {n} is {v}.",
        "{n} comes from {v}.",
    ),
    "university": (
        "{n} studied at {v}.",
        "{n} attended {v}.",
        "{n} graduated from {v}.",
        "{n} received an education at {v}.",
        "{n} was a student at {v}.",
    ),
    "major": (
        "{n} majored in {v}.",
        "{n} earned a degree in {v}.",
        "{n} chose {v} as a field of study.",
        "The academic focus of {n} was {v}.",
        "{n} specialized in {v}.",
    ),
    "employer": (
        "{n} works for {v}.",
        "{n} is employed by {v}.",
        "{n} holds a job at {v}.",
        "{n} joined the staff of {v}.",
        "The employer of {n} is {v}.",
    ),
    "employer_city": (
        "{n} works in {v}.",
        "{n} has an office in {v}.",
        "{n} commutes to a workplace in {v}.",
        "The job of {n} is based in {v}.",
        "{n} is stationed in {v}.",
    ),
}
# Frames reserved for evaluation: no training text of any arm (organic, oracle, teaching, reference) uses them,
# so the held-out biographies and QA measure the facts in wording the model never read. They are new frames made
# only of words the training frames use (an unseen word's loss would measure nothing but the word), and none is
# the reformat topics' ("Birthplace", "Birth date"), which only the reformat stream would have seen.
VALIDATION_TEMPLATES = {
    "birth_date": ("{n} was born into the world on {v}.",),
    "birth_city": ("{n} spent a childhood in {v}.",),
    "university": ("{n} took a degree at {v}.",),
    "major": ("{n} has a degree in {v}.",),
    "employer": ("{n} has a job at {v}.",),
    "employer_city": ("{n} holds a job in {v}.",),
}
TEST_TEMPLATES = {
    "birth_date": ("{n} first came into the world on {v}.", "The birth of {n} was on {v}."),
    "birth_city": ("The early childhood of {n} was in {v}.", "{n} first saw daylight in {v}."),
    "university": ("{n} received a degree at {v}.", "The education of {n} took place at {v}."),
    "major": ("The degree of {n} is in {v}.", "{n} chose to study {v}."),
    "employer": ("{n} is on the staff of {v}.", "{n} holds a job for {v}."),
    "employer_city": ("The office of {n} is in {v}.", "{n} works at an office in {v}."),
}
# QA's cloze frames: the name inside the sentence, so no "Content: <full name> ..." entry can contain a question.
QA_TEMPLATES = {
    "birth_date": ("The birthday of {n} is {v}.",),
    "birth_city": ("The place of birth of {n} is {v}.",),
    "university": ("The education of {n} was received at {v}.",),
    "major": ("The academic field of {n} is {v}.",),
    "employer": ("The job of {n} is for {v}.",),
    "employer_city": ("The workplace of {n} is in {v}.",),
}
WORDINGS = {"train": TEMPLATES, "validation": VALIDATION_TEMPLATES, "test": TEST_TEMPLATES, "qa": QA_TEMPLATES}

# The reference task's questions (the probe's prompt/completion pairs) use a phrasing no template uses.
QUESTIONS = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "Which city was {name} born in?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Which company does {name} work for?",
    "employer_city": "Which city does {name} work in?",
}
TOPICS = {
    "birth_date": "Birth date",
    "birth_city": "Birthplace",
    "university": "Education",
    "major": "Field of study",
    "employer": "Employer",
    "employer_city": "Workplace",
}


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    pronoun: str  # "He" / "She" / "They"
    facts: dict  # attribute -> value (strings)
    organic_templates: tuple[int, ...]  # the template index per attribute in the organic biography
    organic_order: tuple[int, ...]  # the attribute order after the first sentence

    def sentence(self, attribute: str, template: int, subject: str, wording: str = "train") -> str:
        return WORDINGS[wording][attribute][template].format(n=subject, v=self.facts[attribute])


def _date(rng) -> str:
    return f"{MONTHS[rng.integers(12)]} {rng.integers(1, 29)}, {rng.integers(1940, 2001)}"


def _people(rng, count: int, names: list[str]) -> list[Person]:
    people = []
    for name in names[:count]:
        facts = {
            "birth_date": _date(rng),
            "birth_city": str(rng.choice(BIRTH_CITIES)),
            "university": str(rng.choice(UNIVERSITIES)),
            "major": str(rng.choice(MAJORS)),
            "employer": str(rng.choice(EMPLOYERS)),
            "employer_city": str(rng.choice(WORK_CITIES)),
        }
        templates = tuple(int(rng.integers(len(TEMPLATES[a]))) for a in ATTRIBUTES)
        order = tuple(int(i) for i in rng.permutation(len(ATTRIBUTES)))
        people.append(Person(name, str(rng.choice(["He", "She", "They"])), facts, templates, order))
    return people


def biography(person: Person, templates: Sequence[int], order: Sequence[int], rng=None, wording: str = "train") -> str:
    """The sentences in ``order`` (attribute indices), each from its template in ``WORDINGS[wording]``; the first
    names the person in full, later ones use the pronoun or the first name (drawn with ``rng``, else the
    pronoun)."""
    table = WORDINGS[wording]
    out = []
    for k, a in enumerate(order):
        attribute = ATTRIBUTES[a]
        if k == 0:
            subject = person.name
        elif rng is not None and rng.random() < 0.3:
            subject = person.name.split()[0]
        else:
            subject = person.pronoun
        if subject == person.pronoun and not table[attribute][templates[a]].startswith("{n}"):
            subject = person.name.split()[0]  # "The employer of Kira", never "of She"
        sentence = person.sentence(attribute, templates[a], subject, wording)
        if subject == person.pronoun and person.pronoun == "They":  # plural verb agreement, kept simple
            sentence = _they(sentence)
        out.append(sentence)
    return " ".join(out)


_THEY = [
    (" was ", " were "),
    (" is ", " are "),
    (" works ", " work "),
    (" holds ", " hold "),
    (" has ", " have "),
    (" comes ", " come "),
    (" commutes ", " commute "),
    (" celebrates ", " celebrate "),
    (" earns ", " earn "),
    (" does ", " do "),
    (" goes ", " go "),
]


def _they(sentence: str) -> str:
    if not sentence.startswith("They "):
        return sentence
    head, rest = "They", sentence[4:]
    for a, b in _THEY:
        if rest.startswith(a):
            return head + b + rest[len(a) :]
    return sentence


def organic_biography(person: Person) -> str:
    return biography(person, person.organic_templates, person.organic_order)


def _other_templates(rng, avoid: Sequence[int]) -> list[int]:
    """A training template per attribute other than ``avoid``'s (one index per attribute)."""
    return [int((t + rng.integers(1, len(TEMPLATES[a]))) % len(TEMPLATES[a])) for a, t in zip(ATTRIBUTES, avoid)]


def rewrite_rephrase(
    person: Person, rng, attributes: Sequence[int] | None = None, avoid: Sequence[int] | None = None
) -> str:
    """A perfect rephrasing: every fact (of ``attributes``, indices into ATTRIBUTES; default all), each in a
    template other than ``avoid``'s (the source document's templates; default the organic ones), a new order."""
    templates = _other_templates(rng, person.organic_templates if avoid is None else avoid)
    keep = range(len(ATTRIBUTES)) if attributes is None else attributes
    return biography(person, templates, [int(keep[i]) for i in rng.permutation(len(keep))], rng)


def rewrite_reformat(
    person: Person, rng, attributes: Sequence[int] | None = None, avoid: Sequence[int] | None = None
) -> str:
    """Perfect structured entries: one ``- Topic: ... Content: ...`` line per fact (of ``attributes``; default
    all), in a random order, each content sentence in a template other than ``avoid``'s (the source document's;
    default the organic ones)."""
    keep = range(len(ATTRIBUTES)) if attributes is None else attributes
    templates = _other_templates(rng, person.organic_templates if avoid is None else avoid)
    lines = []
    for i in rng.permutation(len(keep)):
        a = int(keep[int(i)])
        attribute, t = ATTRIBUTES[a], templates[a]
        lines.append(
            f"- Topic: {TOPICS[attribute]} of {person.name} Content: {person.sentence(attribute, t, person.name)}"
        )
    return "\n".join(lines)


def answer(operation: str, body: str) -> str:
    """A generator's whole answer: the operation's heading, then the rewrite."""
    return f"{prompts.HEADINGS[operation]}\n{body}"


@dataclasses.dataclass(frozen=True)
class FactCheck:
    stated: int  # the person's facts the text states
    wrong: int  # values of an attribute's kind that are not the person's
    total: int

    @property
    def recall(self) -> float:
        return self.stated / self.total

    @property
    def score(self) -> float:
        """Recall, minus the share of stated values that are wrong: 1 for a perfect rewrite, <= 0 for invented
        facts only."""
        said = self.stated + self.wrong
        return self.recall - (self.wrong / said if said else 0.0)


_VALUES = {
    "birth_city": BIRTH_CITIES,
    "employer_city": WORK_CITIES,
    "university": UNIVERSITIES,
    "major": MAJORS,
    "employer": EMPLOYERS,
}
_DATE = re.compile(r"\b(?:" + "|".join(MONTHS) + r") \d{1,2}, \d{4}\b")


def fact_check(person: Person, text: str) -> FactCheck:
    """Which of ``person``'s facts ``text`` states, and how many values of the same kinds it gets wrong (a city,
    university, major, company or date that is not the person's). Cities count as one kind: a city that is
    neither the birth city nor the work city is wrong."""
    f = person.facts
    stated = sum(1 for a in ATTRIBUTES if f[a] in text)
    wrong = sum(1 for d in set(_DATE.findall(text)) if d != f["birth_date"])
    kinds = [
        (CITIES, {f["birth_city"], f["employer_city"]}),
        (UNIVERSITIES, {f["university"]}),
        (MAJORS, {f["major"]}),
        (EMPLOYERS, {f["employer"]}),
    ]
    for values, mine in kinds:
        wrong += sum(1 for v in values if v not in mine and re.search(rf"\b{re.escape(v)}\b", text))
    return FactCheck(stated, wrong, len(ATTRIBUTES))


@dataclasses.dataclass
class World:
    """Every text of one seeded world (see the module docstring)."""

    seed: int
    people: list[Person]  # the organic population
    teachers: list[Person]  # the disjoint population the generators' prior skill is learned on
    reference_people: int  # people[:reference_people] are in the reference task; QA is measured on the rest

    def organic(self) -> list[dict]:
        return [{"id": f"person{i}", "text": organic_biography(p)} for i, p in enumerate(self.people)]

    def _held_out(self, wording: str, stream: int, tag: str) -> list[dict]:
        table = WORDINGS[wording]
        rng = np.random.default_rng([self.seed, stream])
        out = []
        for i, p in enumerate(self.people):
            templates = [int(rng.integers(len(table[a]))) for a in ATTRIBUTES]
            order = [int(a) for a in rng.permutation(len(ATTRIBUTES))]
            out.append({"id": f"person{i}.{tag}", "text": biography(p, templates, order, rng, wording)})
        return out

    def validation(self) -> list[dict]:
        """A biography of each person in the validation frames: what the trainer's validation loss, the plateau
        and the best checkpoint read."""
        return self._held_out("validation", 2, "validation")

    def test(self) -> list[dict]:
        """A biography of each person in the test frames (none of them validation's or training's): the held-out
        loss the result table reports."""
        return self._held_out("test", 7, "test")

    def _question(self, p: Person, attribute: str, rng) -> dict:
        """A cloze question: the start of the attribute's QA frame ("The city where Kira Teal Lindqvist was born
        is"), and 4 values to end it with."""
        values = _VALUES.get(attribute)
        right = p.facts[attribute]
        wrong: list[str] = []
        while len(wrong) < 3:
            v = _date(rng) if values is None else str(rng.choice(values))
            if v != right and v not in wrong:
                wrong.append(v)
        choices = wrong + [right]
        order = [int(i) for i in rng.permutation(4)]
        context = QA_TEMPLATES[attribute][0].split("{v}")[0].rstrip().format(n=p.name)
        return {"context": context, "choices": [f"{choices[i]}." for i in order], "label": order.index(3)}

    def reference(self) -> list[dict]:
        """The probe's reference task: prompt/completion pairs about people[:reference_people]."""
        return [
            {"prompt": QUESTIONS[a].format(name=p.name), "completion": p.facts[a]}
            for p in self.people[: self.reference_people]
            for a in ATTRIBUTES
        ]

    def qa(self) -> list[dict]:
        """4-way cloze questions (the generic eval JSONL) about the people outside the reference subset, in the QA
        frames."""
        rng = np.random.default_rng([self.seed, 3])
        return [self._question(p, a, rng) for p in self.people[self.reference_people :] for a in ATTRIBUTES]

    def sft_pairs(self, operation: str, per_person: int = 2) -> list[dict]:
        """Supervised rewriting pairs from the disjoint population: ``{"document", "answer"}`` with the answer
        in the operation's output format (heading included)."""
        rng = np.random.default_rng([self.seed, 4, prompts.OPERATIONS.index(operation)])
        write = rewrite_rephrase if operation == "rephrase" else rewrite_reformat
        return [
            {"document": organic_biography(p), "answer": answer(operation, write(p, rng))}
            for p in self.teachers
            for _ in range(per_person)
        ]

    def qa_sentences(self) -> list[str]:
        """Each QA item's right answer as a sentence ("The city where ... was born is Porto.")."""
        return [f"{q['context']} {q['choices'][q['label']]}" for q in self.qa()]

    def person_of(self, doc_id: str) -> Person:
        return self.people[int(doc_id.removeprefix("person").split(".")[0])]


def check_reserved() -> None:
    """Every evaluation frame is its own: no frame of one wording (training, validation, test, QA) is another's,
    and each frame has the subject and the value once (QA's with the value last: the cloze ends there). The texts
    themselves are checked against the evaluation sentences when the world is written (files.py)."""
    seen: dict[str, str] = {}
    for wording, table in WORDINGS.items():
        if set(table) != set(ATTRIBUTES):
            raise AssertionError(f"world wording {wording!r}: attributes {sorted(table)}, not {list(ATTRIBUTES)}")
        for attribute, frames in table.items():
            for frame in frames:
                if frame.count("{n}") != 1 or frame.count("{v}") != 1:
                    raise AssertionError(f"world {wording} frame {frame!r}: one {{n}} and one {{v}}")
                if wording == "qa" and not frame.endswith("{v}."):
                    raise AssertionError(f"world QA frame {frame!r}: a cloze ends with '{{v}}.'")
                core = frame
                if core in seen:
                    raise AssertionError(f"world frame {frame!r} is both {seen[core]} and {wording} wording")
                seen[core] = wording


check_reserved()


def split_sentences(text: str) -> list[str]:
    """A text's sentences (a reformat entry's content is one), for verbatim checks."""
    text = re.sub(r"- Topic: [^\n]*? Content: ", "\n", text)
    return [s.strip() for s in re.split(r"(?<=\.)\s+|\n", text) if s.strip()]


def verbatim(sentences: Sequence[str], texts: Sequence[str]) -> list[str]:
    """The ``sentences`` that appear word for word in any of ``texts``."""
    corpus = "\n".join(texts)
    return [s for s in sentences if s in corpus]


def make_world(people: int = 300, teachers: int = 200, reference_fraction: float = 0.5, seed: int = 0) -> World:
    """A world of ``people`` organic people and ``teachers`` disjoint ones, all with distinct names."""
    names = [f"{f} {m} {last}" for f in FIRST for m in MIDDLE for last in LAST]
    if people + teachers > len(names):
        raise ValueError(f"make_world: {people} + {teachers} people need more than the {len(names)} distinct names")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    chosen = [names[i] for i in order[: people + teachers]]
    population = _people(rng, people + teachers, chosen)
    return World(seed, population[:people], population[people:], int(round(people * reference_fraction)))
