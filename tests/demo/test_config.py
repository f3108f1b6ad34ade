"""DemoConfig refuses an oracle ladder too short to fit with degrees of freedom, and rungs out of order."""

import pytest

from synpro_jax.demo.config import MIN_ORACLE_RUNS, DemoConfig


def test_the_default_ladder_has_five_oracle_runs_and_fractions_are_allowed():
    cfg = DemoConfig(out_dir="x")
    assert cfg.oracle_multiples == (1.5, 2.0, 3.0, 4.0, 6.0) and MIN_ORACLE_RUNS == 4
    assert len(cfg.oracle_multiples) + 1 >= 5  # with repetition: the fit's points


@pytest.mark.parametrize(
    "multiples, match",
    [
        ((2, 4), "at least 4"),
        ((1.5, 2, 3), "at least 4"),
        ((1, 2, 3, 4), "above 1"),
        ((2, 1.5, 3, 4), "increasing"),
        ((1.5, 2, 2, 4), "distinct"),
        ((1.5, 2, 3, 8), "at most"),
        ((True, 2, 3, 4), "numbers"),
    ],
)
def test_a_short_or_disordered_ladder_is_refused_naming_the_knob(multiples, match):
    with pytest.raises(ValueError, match=match) as e:
        DemoConfig(out_dir="x", oracle_multiples=multiples)
    assert "DemoConfig.oracle_multiples" in str(e.value)
