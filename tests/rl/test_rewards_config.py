"""The reward gin run files carry the release's weights; RewardsConfig names a wrong knob; build_suite hands
runtime objects (scorer, embedder) to the factories that take them, and applies variants and fallbacks."""

import dataclasses
import json
from pathlib import Path

import gin
import numpy as np
import pytest

from synpro_jax.generation.prompts import HEADINGS
from synpro_jax.rl.rewards import RewardError, RewardInputs, RewardsConfig, build_suite, register_reward

REPO = Path(__file__).resolve().parents[2]
RELEASE = {
    "rephrase": {
        "data_influence": 3.0,
        "quality": 1.0,
        "similarity": 1.0,
        "structure": 1.0,
        "length": 1.0,
        "format": 1.0,
    },
    "reformat": {"data_influence": 3.0, "faithfulness": 1.0, "quality": 1.0, "format": 1.0},
}


@pytest.fixture
def quality_data(tmp_path):
    path = tmp_path / "labels.jsonl"
    texts = [
        "The report explains the water study in detail.",
        "click here buy now free free",
        "Seedlings grew faster in the loam soil.",
        "login home cart login home cart",
    ]
    path.write_text("".join(json.dumps({"text": t, "label": (i + 1) % 2}) + "\n" for i, t in enumerate(texts)))
    yield str(path)
    gin.clear_config()


def embed(texts):
    return [np.eye(26)[[ord(c) - 97 for c in t.lower() if c.isalpha() and c.isascii()]].reshape(-1, 26) for t in texts]


@pytest.mark.parametrize("operation", ["rephrase", "reformat"])
def test_run_files_hold_the_release_weights(operation, quality_data):
    gin.parse_config_files_and_bindings(
        [str(REPO / f"gin/runs/grpo_{operation}_rewards.gin")], [f"QUALITY_DATA = '{quality_data}'"]
    )
    config = gin.get_configurable("synpro.RewardsConfig")()
    assert config.options["quality"] == {"data": quality_data}
    # a small hash space keeps the fit fast here; the file's other options stay as written
    config = dataclasses.replace(config, options={**config.options, "quality": {"data": quality_data, "dim": 1024}})
    assert config.operation == operation and dict(config.weights) == RELEASE[operation]
    suite = build_suite(config, scorer=lambda t: np.array([len(x) / 100 for x in t]), embedder=embed)
    assert suite.weights == RELEASE[operation] and set(suite.rewards) == set(RELEASE[operation])
    h = HEADINGS[operation]
    src = "Some source text about soil and water. " * 20
    body = "- Topic: soil water Content: source text about soil and water." if operation == "reformat" else src
    out = suite(RewardInputs(operation, [src] * 2, [f"{h}\n{body}", "no heading at all"], np.zeros(2, int)))
    total = sum(RELEASE[operation][f] * out.values[f] for f in RELEASE[operation])
    np.testing.assert_allclose(out.total, total, atol=1e-6)
    assert out.values["format"].tolist() == [1, 0]
    assert out.values["data_influence"][1] == 0  # no heading: scored as the source


def test_config_errors_name_the_knob():
    with pytest.raises(ValueError, match="RewardsConfig.operation='summarise'"):
        RewardsConfig("summarise", {"format": 1.0})
    with pytest.raises(ValueError, match="RewardsConfig.weights is empty"):
        RewardsConfig("rephrase", {})
    with pytest.raises(ValueError, match=r"RewardsConfig.weights names unknown families \['qualty'\]"):
        RewardsConfig("rephrase", {"qualty": 1.0})
    with pytest.raises(ValueError, match=r"RewardsConfig.fallbacks names \['quality'\], which have no weight"):
        RewardsConfig("rephrase", {"format": 1.0}, fallbacks={"quality": 0.0})
    with pytest.raises(ValueError, match=r"RewardsConfig.weights\['format'\]='1'"):
        RewardsConfig("rephrase", {"format": "1"})
    with pytest.raises(ValueError, match=r"RewardsConfig.variants\['quality'\]='quality_nope' is not a registered"):
        build_suite(RewardsConfig("rephrase", {"quality": 1.0}, variants={"quality": "quality_nope"}))
    with pytest.raises(ValueError, match=r"RewardsConfig.options\['length'\]: length does not take these options"):
        build_suite(RewardsConfig("rephrase", {"length": 1.0}, options={"length": {"ratio": 2}}))


class Flaky:
    name = "flaky_test_judge"

    def __call__(self, inputs):
        raise RewardError("judge timed out")


register_reward("flaky_test_judge")(Flaky)


def test_variants_and_fallbacks():
    config = RewardsConfig(
        "rephrase",
        {"format": 1.0, "structure": 2.0},
        variants={"structure": "flaky_test_judge"},
        fallbacks={"structure": 0.5},
    )
    out = build_suite(config)(RewardInputs("rephrase", ["s"], [f"{HEADINGS['rephrase']}\nx"], np.zeros(1, int)))
    assert out.failures == {"format": 0, "structure": 1}
    np.testing.assert_allclose(out.total, [1.0 + 2 * 0.5])
    with pytest.raises(RewardError, match="reward 'structure' failed and has no fallback: judge timed out"):
        build_suite(RewardsConfig("rephrase", {"structure": 1.0}, variants={"structure": "flaky_test_judge"}))(
            RewardInputs("rephrase", ["s"], ["x"], np.zeros(1, int))
        )


@pytest.mark.parametrize("operation", ["rephrase", "reformat"])
def test_run_files_pass_the_cli_gin_checks(operation, quality_data):
    from synpro_jax import configs
    from synpro_jax.configs import GinConfigError

    with pytest.raises(GinConfigError, match="QUALITY_DATA"):
        configs.parse([str(REPO / f"gin/runs/grpo_{operation}_rewards.gin")], [])
    configs.parse([str(REPO / f"gin/runs/grpo_{operation}_rewards.gin")], [f"QUALITY_DATA = '{quality_data}'"])
    assert gin.query_parameter("synpro.RewardsConfig.operation") == operation
    with pytest.raises(GinConfigError, match="RewardsConfig has no parameter 'weight'; did you mean weights"):
        configs.parse(
            [str(REPO / f"gin/runs/grpo_{operation}_rewards.gin")],
            [f"QUALITY_DATA = '{quality_data}'", "synpro.RewardsConfig.weight = {}"],
        )
