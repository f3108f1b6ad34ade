"""The demo's biography world: seeded and reproducible, organic, validation and test texts state every fact in
disjoint wordings (the evaluation frames reserved), QA and reference tasks split the people, the generators'
teaching pairs come from another population, and the fact checker scores rewrites exactly."""

import re

import numpy as np
import pytest

from synpro_jax.demo import world as w
from synpro_jax.generation import prompts


@pytest.fixture(scope="module")
def world():
    return w.make_world(people=120, teachers=40, seed=3)


def test_a_seed_makes_the_same_world_and_names_are_distinct(world):
    again = w.make_world(people=120, teachers=40, seed=3)
    assert world.organic() == again.organic() and world.qa() == again.qa()
    assert w.make_world(people=120, teachers=40, seed=4).organic() != world.organic()
    names = [p.name for p in world.people + world.teachers]
    assert len(set(names)) == len(names) == 160


def _pattern(attribute: str, template: int, value: str) -> re.Pattern:
    text = re.escape(w.TEMPLATES[attribute][template])
    text = text.replace(re.escape("{n}"), r"[A-Z]\w*(?: [A-Z]\w*)*").replace(re.escape("{v}"), re.escape(value))
    for singular, plural in w._THEY:  # "They were ..." is the same template as "He was ..."
        text = text.replace(re.escape(singular), f"(?:{re.escape(singular)}|{re.escape(plural)})")
    return re.compile(text)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_organic_and_evaluation_biographies_state_every_fact_in_disjoint_wordings(world, split):
    held_out = getattr(world, split)()
    for person, doc, held in zip(world.people, world.organic(), held_out):
        assert person.name in doc["text"].split(".")[0]  # the first sentence names the person in full
        for text in (doc["text"], held["text"]):
            check = w.fact_check(person, text)
            assert (check.stated, check.wrong, check.score) == (6, 0, 1.0), text
        for attribute, t in zip(w.ATTRIBUTES, person.organic_templates):
            pattern = _pattern(attribute, t, person.facts[attribute])
            assert pattern.search(doc["text"]) and not pattern.search(held["text"]), (attribute, held["text"])
        assert " of He " not in held["text"] and " of She " not in held["text"]
        # No training frame of any attribute appears in the evaluation text.
        for attribute in w.ATTRIBUTES:
            for t in range(len(w.TEMPLATES[attribute])):
                assert not _pattern(attribute, t, person.facts[attribute]).search(held["text"]), held["text"]


def test_reserved_wordings_are_disjoint_and_checked_at_import(monkeypatch):
    frames = [f for table in w.WORDINGS.values() for fs in table.values() for f in fs]
    assert len(frames) == len(set(frames))

    # Made of the training frames' words only: an unseen word's loss measures the word, not the fact.
    def words(frames):
        return {x for f in frames for x in re.findall(r"[A-Za-z]+", f.replace("{n}", "").replace("{v}", ""))}

    trained = words(f for fs in w.TEMPLATES.values() for f in fs)
    for wording in ("validation", "test", "qa"):
        assert words(f for fs in w.WORDINGS[wording].values() for f in fs) <= trained, wording
    monkeypatch.setitem(w.VALIDATION_TEMPLATES, "major", (w.TEMPLATES["major"][0],))
    with pytest.raises(AssertionError, match="both train and validation"):
        w.check_reserved()


def test_qa_is_not_in_the_reformat_format(world):
    """A reformat entry reads 'Content: <full name> <frame> <value>'; a QA context has the name inside a reserved
    frame, so no entry a generator writes in training frames contains a question."""
    rng = np.random.default_rng(0)
    entries = "\n".join(w.rewrite_reformat(p, rng) for p in world.people)
    rephrased = "\n".join(w.rewrite_rephrase(p, rng) for p in world.people)
    for sentence in world.qa_sentences():
        assert not sentence.startswith(tuple(p.name for p in world.people))
        assert sentence not in entries and sentence not in rephrased


def test_reference_and_qa_split_the_people_and_ask_in_new_words(world):
    k = world.reference_people
    assert k == 60
    ref_names = {p.name for p in world.people[:k]}
    assert {r["prompt"].split(" of ")[-1].rstrip("?") for r in world.reference() if " of " in r["prompt"]} <= ref_names
    qa = world.qa()
    assert len(qa) == (120 - k) * 6
    for item, (person, attribute) in zip(qa, [(p, a) for p in world.people[k:] for a in w.ATTRIBUTES]):
        assert person.name in item["context"] and person.name not in ref_names
        assert len(set(item["choices"])) == 4 and item["choices"][item["label"]] == person.facts[attribute] + "."
        # A cloze in a wording this person's organic biography did not use for this fact.
        organic = w.organic_biography(person)
        t = person.organic_templates[w.ATTRIBUTES.index(attribute)]
        assert w.TEMPLATES[attribute][t].split("{v}")[0].rstrip().format(n=person.name) != item["context"]
        assert item["context"] + " " + item["choices"][item["label"]] not in organic


@pytest.mark.parametrize("operation", prompts.OPERATIONS)
def test_teaching_pairs_come_from_the_other_population_in_the_answer_format(world, operation):
    pairs = world.sft_pairs(operation, per_person=2)
    assert len(pairs) == 80
    organic_names = {p.name for p in world.people}
    teachers = {p.name: p for p in world.teachers}
    for pair in pairs:
        name = next(n for n in teachers if n in pair["document"])
        assert not any(n in pair["answer"] for n in organic_names)
        body = prompts.parse_answer(pair["answer"], operation)
        assert body.text  # the heading is found
        if operation == "reformat":
            assert len(prompts.parse_entries(body.text)) == 6
        assert w.fact_check(teachers[name], body.text).score == 1.0
        assert body.text != pair["document"]


def test_fact_check_counts_stated_and_wrong_facts():
    person = w.make_world(people=1, teachers=0, seed=0).people[0]
    f = person.facts
    assert w.fact_check(person, "").score == 0.0
    half = f"{person.name} was born on {f['birth_date']} in {f['birth_city']} and studied {f['major']}."
    assert w.fact_check(person, half) == w.FactCheck(3, 0, 6)
    other_city = next(c for c in w.CITIES if c not in (f["birth_city"], f["employer_city"]))
    other_major = next(m for m in w.MAJORS if m != f["major"])
    wrong = f"{person.name} grew up in {other_city}, studied {other_major} and was born on January 1, 1900."
    check = w.fact_check(person, wrong)
    assert (check.stated, check.wrong) == (0, 3) and check.score == -1.0
    assert w.fact_check(person, half + " " + wrong).score == pytest.approx(0.5 - 0.5)
