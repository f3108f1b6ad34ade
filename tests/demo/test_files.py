"""The world's files: written once, the organic biographies first, validation and test apart, a budget in
corpus order that is exactly the organic corpus (and each oracle budget whole rephrasings), and another world
refused in the same place."""

import json

import pytest

from synpro_jax.data.config import DataConfig
from synpro_jax.data.streams import organic_split
from synpro_jax.demo import world as W
from synpro_jax.demo.files import write_world

SPEC = dict(people=10, teachers=8, reference_fraction=0.5, seed=4, oracle_copies=3, vocab_size=1024)


def test_world_files_and_budgets(tmp_path):
    files = write_world(tmp_path / "world", **SPEC)
    docs = [json.loads(line) for line in files.corpus.read_text().splitlines()]
    assert [d["id"] for d in docs[:10]] == [f"person{i}" for i in range(10)]
    # the oracle's rephrasings, round by round, each round in a shuffled order of the people
    assert sorted(d["id"] for d in docs[10:20]) == sorted(f"person{i}.oracle1" for i in range(10))
    assert sorted(d["id"] for d in docs[20:30]) == sorted(f"person{i}.oracle2" for i in range(10)) and len(docs) == 30
    assert [d["id"] for d in docs[10:20]] != [f"person{i}.oracle1" for i in range(10)]
    world = files.world()
    for d in docs[10:]:  # the oracle's further data: perfect rephrasings
        person = world.person_of(d["id"])
        assert W.fact_check(person, d["text"]).score == 1.0 and d["text"] != W.organic_biography(person)
    assert len(files.qa.read_text().splitlines()) == 5 * len(W.ATTRIBUTES)
    assert len(files.reference.read_text().splitlines()) == 5 * len(W.ATTRIBUTES)
    validation = [json.loads(line)["text"] for line in files.validation.read_text().splitlines()]
    test = [json.loads(line)["text"] for line in files.test.read_text().splitlines()]
    assert len(validation) == len(test) == 10 and not set(validation) & set(test)

    data = DataConfig(
        corpus="world",
        organic=(str(files.corpus),),
        vocabulary=str(files.tokenizer),
        validation=(str(files.validation),),
        budget_order="corpus",
        cache_dir=str(tmp_path / "cache"),
    )
    _, full, val, _ = organic_split(data, progress=False)
    assert val.num_docs == 10 and full.num_docs == 30
    organic = int(full.lengths()[:10].sum())
    _, train, _, _ = organic_split(DataConfig(**{**data.__dict__, "organic_budget_tokens": organic}), progress=False)
    assert list(train.doc_ids) == list(full.doc_ids)[:10]

    assert write_world(tmp_path / "world", **SPEC).spec == files.spec  # found, not rewritten
    with pytest.raises(ValueError, match="describes another world"):
        write_world(tmp_path / "world", **{**SPEC, "seed": 5})
