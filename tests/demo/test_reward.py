"""faithfulness_facts, the world's exact faithfulness reward, against the generic lexical heuristic."""

import numpy as np
import pytest

from synpro_jax.demo import world as W
from synpro_jax.demo.files import write_world
import synpro_jax.demo.reward  # noqa: F401  (registers faithfulness_facts)
from synpro_jax.rl.rewards import RewardError, RewardInputs, build_suite, make_reward
from synpro_jax.rl.rewards.config import RewardsConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_world(
        tmp_path_factory.mktemp("world"),
        people=12,
        teachers=10,
        reference_fraction=0.5,
        seed=3,
        oracle_copies=2,
        vocab_size=1024,
    )


def test_scores_are_exact_where_the_lexical_check_is_not(files):
    world = files.world()
    person = world.people[0]
    source = W.organic_biography(person)
    rng = np.random.default_rng(0)
    perfect = W.answer("reformat", W.rewrite_reformat(person, rng))
    other = next(c for c in W.BIRTH_CITIES if c != person.facts["birth_city"])
    wrong_city = perfect.replace(person.facts["birth_city"], other)  # one invented fact
    dropped = "\n".join(perfect.splitlines()[:4])  # heading and 3 of the 6 entries
    completions = [perfect, wrong_city, dropped, perfect.split("\n", 1)[1]]  # the last has no heading
    inputs = RewardInputs("reformat", [source] * 4, completions, np.zeros(4, int))
    exact = make_reward("faithfulness_facts", world=str(files.world_json))(inputs)
    np.testing.assert_allclose(exact, [1.0, 5 / 6 - 1 / 6, 0.5, 0.0], atol=1e-6)
    lexical = make_reward("faithfulness_lexical")(inputs)
    # The lexical heuristic marks entries whose topic words ("Birthplace") the source lacks, so it scores the
    # perfect rewrite below the one that dropped half the facts; the exact check orders them right.
    assert lexical[0] < 1.0 and lexical[2] > lexical[0] and exact[2] < exact[0]
    # Through the suite, selected as the faithfulness family's variant.
    suite = build_suite(
        RewardsConfig(
            operation="reformat",
            weights={"faithfulness": 1.0},
            variants={"faithfulness": "faithfulness_facts"},
            options={"faithfulness": {"world": str(files.world_json)}},
        )
    )
    np.testing.assert_allclose(suite(inputs).total, exact)


def test_a_source_outside_the_world_cannot_be_judged(files):
    reward = make_reward("faithfulness_facts", world=str(files.world_json))
    with pytest.raises(RewardError, match="not an organic biography"):
        reward(RewardInputs("rephrase", ["Some web page."], ["Here is the rewritten document:\nx"], np.zeros(1, int)))
    with pytest.raises(ValueError, match="no such file"):
        make_reward("faithfulness_facts", world=str(files.root / "missing.json"))
