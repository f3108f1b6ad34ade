"""The plateau detector the SynPro loop uses to start a round."""

import pytest

from synpro_jax.train.plateau import PlateauDetector


def test_detects_a_plateau_after_the_window():
    d = PlateauDetector(window=2, min_rel_improvement=0.01)
    assert [d.update(x) for x in (5.0, 4.0, 3.5)] == [False, False, False]  # still improving fast
    assert d.update(3.49) is False  # best of last 2 (3.49) vs before (4.0): 12.8% better
    assert d.update(3.48) is True  # 3.48 vs 3.5: 0.6% < 1%
    assert d.update(3.0) is False  # a real improvement ends the plateau


def test_state_round_trips_and_validation():
    d = PlateauDetector(window=1, min_rel_improvement=0.1)
    for x in (2.0, 1.95):
        d.update(x)
    assert d.plateaued
    e = PlateauDetector(window=1, min_rel_improvement=0.1)
    e.load_state_dict(d.state_dict())
    assert e.plateaued and e.history == [2.0, 1.95]
    with pytest.raises(ValueError, match="window=0"):
        PlateauDetector(window=0)
