"""data_influence: influence(answer) - influence(source) with the release's sign and 500-character guard, each
source scored once per prompt, on a fake scorer (exact arithmetic) and on a real tiny probe (theta, theta' on a
mesh); the error paths of a failing or malformed scorer."""

import jax
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.generation.prompts import HEADINGS
from synpro_jax.influence import influence_scores
from synpro_jax.influence.probe import Probe
from synpro_jax.rl.rewards import RewardError, RewardInputs, RewardSuite, make_reward
from synpro_jax.rl.rewards.influence import probe_scorer

H = HEADINGS["rephrase"]
SRC_A, SRC_B = "alpha " * 120, "beta " * 150


class Recording:
    """influence(text) = len(text) / 1000 + the count of 'x', recording every text it is asked about."""

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen += list(texts)
        return np.array([len(t) / 1000 + t.count("x") for t in texts])


def batch():
    completions = [
        f"{H}\n" + "x" * 500,  # exactly 500 characters: scored
        f"{H}\n" + "x" * 499,  # 499: scored as the source, reward 0
        "x" * 900,  # no heading: empty answer, reward 0
        f"{H}\n" + "y" * 600,
        f"{H}\n" + "xy" * 400,
        f"{H}\n" + "z" * 10,
    ]
    sources = [SRC_A] * 3 + [SRC_B] * 3
    return RewardInputs("rephrase", sources, completions, np.array([0, 0, 0, 1, 1, 1]))


def test_known_values_and_each_source_scored_once():
    scorer = Recording()
    got = make_reward("data_influence", scorer=scorer)(batch())
    a, b = len(SRC_A) / 1000, len(SRC_B) / 1000
    want = [0.5 + 500 - a, 0, 0, 0.6 - b, 0.8 + 400 - b, 0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert scorer.seen.count(SRC_A) == 1 and scorer.seen.count(SRC_B) == 1
    assert len(scorer.seen) == 2 + 3  # the two sources, then the three answers of >= 500 characters


def test_min_chars_is_a_knob():
    got = make_reward("data_influence", scorer=Recording(), min_chars=10)(batch())
    assert got[1] != 0 and got[5] != 0
    with pytest.raises(ValueError, match="min_chars=-1"):
        make_reward("data_influence", scorer=Recording(), min_chars=-1)
    with pytest.raises(ValueError, match="needs a scorer"):
        make_reward("data_influence")


@pytest.mark.parametrize(
    "scorer, match",
    [
        (
            lambda t: (_ for _ in ()).throw(ConnectionError("probe host down")),
            "data_influence scorer failed: ConnectionError: probe host down",
        ),
        (lambda t: np.zeros(len(t) - 1), r"returned shape \(4,\) for 5 texts"),
        (lambda t: np.full(len(t), np.nan), "non-finite values at"),
    ],
)
def test_scorer_failures_are_reward_errors(scorer, match):
    with pytest.raises(RewardError, match=match):
        make_reward("data_influence", scorer=scorer)(batch())
    out = RewardSuite({"di": make_reward("data_influence", scorer=scorer)}, {"di": 3.0}, {"di": 0.0})(batch())
    assert out.failures == {"di": 6}


class CharVocab:
    def __call__(self, texts):
        return [[2 + (ord(c) % 200) for c in t] for t in texts]


@pytest.mark.slow  # ~9 s on 2 cores: two compiles of a tiny model on an (4, 2, 1) mesh
def test_on_a_real_probe_equals_two_forwards_on_the_mesh():
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    theta = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    theta_ft = jax.tree.map(lambda x: x * 1.02, theta)
    probe = Probe(cfg, mesh, theta, theta_ft, max_len=32)
    rng = np.random.default_rng(0)
    words = ["stone", "river", "cloud", "paper", "light", "seven"]
    src = " ".join(rng.choice(words, 120))
    outs = [" ".join(rng.choice(words, 110)), "short"]
    inputs = RewardInputs("rephrase", [src] * 2, [f"{H}\n{o}" for o in outs], np.zeros(2, int))
    got = make_reward("data_influence", scorer=probe_scorer(probe, CharVocab(), batch_size=8))(inputs)

    def direct(text):  # L_theta - L_theta' on the first max_len + 1 tokens, one device, no probe
        toks = np.asarray(CharVocab()([text])[0][:33], np.int32)[None]
        return float(influence_scores(cfg, theta, theta_ft, toks)[0])

    np.testing.assert_allclose(got, [direct(outs[0]) - direct(src), 0.0], atol=1e-5)
    assert got[0] != 0


def test_probe_scorer_refuses_a_text_without_a_target():
    with pytest.raises(RewardError, match="text 1 encodes to 1 token"):
        probe_scorer(object(), CharVocab(), batch_size=8)(["ok text", "a"])
