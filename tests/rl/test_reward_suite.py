"""The reward registry and the weighted suite: weights, fallbacks counted, failures without a fallback raised."""

import numpy as np
import pytest

from synpro_jax.rl.rewards.base import RewardError, RewardInputs, RewardSuite, make_reward, register_reward


def inputs(n=4):
    return RewardInputs("rephrase", ["src"] * n, [f"out {i}" for i in range(n)], np.repeat(np.arange(n // 2), 2))


class Const:
    def __init__(self, value):
        self.name, self.value = "const", value

    def __call__(self, x):
        return np.full(len(x), self.value, np.float32)


class Broken:
    name = "broken"

    def __call__(self, x):
        raise RewardError("judge unreachable")


def test_weighted_total_and_fallback_counted():
    suite = RewardSuite({"a": Const(1.0), "b": Const(0.5), "c": Broken()}, {"a": 3.0, "b": 1.0, "c": 1.0},
                        fallbacks={"c": 0.25})
    out = suite(inputs())
    np.testing.assert_allclose(out.total, 3.0 + 0.5 + 0.25)
    assert out.failures == {"a": 0, "b": 0, "c": 4}


def test_failure_without_fallback_names_the_reward():
    with pytest.raises(RewardError, match="reward 'c' failed and has no fallback: judge unreachable"):
        RewardSuite({"c": Broken()}, {"c": 1.0})(inputs())


def test_bad_shapes_and_config_errors():
    class Short:
        def __call__(self, x):
            return np.zeros(1)

    with pytest.raises(RewardError, match=r"expected \(4,\)"):
        RewardSuite({"s": Short()}, {"s": 1.0})(inputs())
    with pytest.raises(ValueError, match="differ on"):
        RewardSuite({"a": Const(1)}, {"b": 1.0})
    with pytest.raises(ValueError, match="operation='translate'"):
        RewardInputs("translate", [], [], np.zeros(0, int))


def test_registry():
    @register_reward("unit_const")
    def factory(value=2.0):
        return Const(value)

    assert make_reward("unit_const", value=3.0)(inputs(2)).tolist() == [3.0, 3.0]
    with pytest.raises(KeyError, match="no reward 'nope'"):
        make_reward("nope")
