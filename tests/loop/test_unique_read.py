"""D on the oracle ladder is what a run read, from its stages' records: exact when its last stage read its
whole organic set, bounds and a flag when it could not in its steps."""

from synpro_jax.loop.report import unique_read


def test_a_run_that_read_its_whole_set_has_exactly_that_d():
    rounds = [
        {"organic_unique_tokens": 300, "organic_tokens": 300},  # round 0: the organic set
        {"organic_unique_tokens": 880, "organic_tokens": 880},  # an oracle's stage: all of its budget
    ]
    assert unique_read(rounds) == {"tokens": 880, "budget": 880, "complete": True, "low": 880, "high": 880}


def test_an_oracle_that_could_not_read_its_budget_is_flagged_with_bounds():
    """The loop's issue: budgets of 120k and 240k tokens of which the runs read at most about 91k."""
    rounds = [
        {"organic_unique_tokens": 30_000, "organic_tokens": 30_000},
        {"organic_unique_tokens": 91_000, "organic_tokens": 240_000},
    ]
    d = unique_read(rounds)
    assert d["complete"] is False and d["tokens"] == d["low"] == 91_000 and d["high"] == 121_000
    assert d["budget"] == 240_000


def test_a_stage_without_records_falls_back_to_its_set():
    assert unique_read([{"organic_tokens": 500}])["tokens"] == 500
    assert unique_read([])["tokens"] is None
