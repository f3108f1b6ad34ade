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
    suite = RewardSuite(
        {"a": Const(1.0), "b": Const(0.5), "c": Broken()}, {"a": 3.0, "b": 1.0, "c": 1.0}, fallbacks={"c": 0.25}
    )
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


class Fixed:
    def __init__(self, values):
        self.name, self.values = "fixed", np.asarray(values, np.float32)

    def __call__(self, x):
        return self.values


def test_group_normalization_standardizes_each_reward_within_its_group_before_weighting():
    # Two groups of 4: a 0/1 reward and a small-scale one (data_influence-like), weights 1 and 3.
    big = [0, 1, 1, 0, 1, 1, 1, 1]
    small = [0.01, -0.02, 0.005, 0.0, 0.3, 0.1, 0.2, 0.1]
    group = np.repeat(np.arange(2), 4)
    x = RewardInputs("rephrase", ["src"] * 8, [f"o{i}" for i in range(8)], group)
    rewards = {"big": Fixed(big), "small": Fixed(small)}
    plain = RewardSuite(rewards, {"big": 1.0, "small": 3.0})(x)
    np.testing.assert_allclose(plain.total, np.asarray(big) + 3 * np.asarray(small), atol=1e-6)

    normed = RewardSuite(rewards, {"big": 1.0, "small": 3.0}, normalize="group")(x)
    expected = np.zeros(8)
    for name, w in (("big", 1.0), ("small", 3.0)):  # by hand, one group at a time
        v = np.asarray({"big": big, "small": small}[name], np.float64)
        for g in range(2):
            s = v[4 * g : 4 * g + 4]
            sd = np.sqrt(((s - s.mean()) ** 2).sum() / 3)
            expected[4 * g : 4 * g + 4] += 0 if sd == 0 else w * (s - s.mean()) / (sd + 1e-4)
    np.testing.assert_allclose(normed.total, expected, atol=1e-5)
    assert normed.total[4:8].tolist() == pytest.approx(expected[4:8], abs=1e-5)  # constant "big": no term
    np.testing.assert_array_equal(normed.values["small"], np.asarray(small, np.float32))  # logged raw
    with pytest.raises(ValueError, match="normalize='batch'"):
        RewardSuite(rewards, {"big": 1.0, "small": 3.0}, normalize="batch")


def test_rewards_config_normalize_reaches_the_suite_and_is_checked():
    from synpro_jax.rl.rewards.config import RewardsConfig, build_suite

    cfg = RewardsConfig(weights={"format": 1.0, "length": 1.0}, normalize="group")
    assert build_suite(cfg).normalize == "group"
    assert build_suite(RewardsConfig(weights={"format": 1.0})).normalize == "none"
    with pytest.raises(ValueError, match="RewardsConfig.normalize='z'"):
        RewardsConfig(weights={"format": 1.0}, normalize="z")
