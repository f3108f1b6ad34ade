"""LoopConfig: its checks name the knob; the experiment's stage order; the SynPro mixture's rates; GRPO steps per
training round."""

import pytest

from synpro_jax.generation.run import SynthesizeJob
from synpro_jax.influence.run import ProbeJob
from synpro_jax.loop import experiment
from synpro_jax.loop.config import LoopConfig, method_names
from synpro_jax.loop.plan import GeneratorSpec
from synpro_jax.loop.runner import stage_order
from synpro_jax.loop.settings import GeneratorStages, StageSettings
from synpro_jax.rl.run import GRPOJob
from synpro_jax.train.run import PretrainJob

GEN = {"name": "reformat", "operation": "reformat", "start": "hf/olmo2"}


def test_runs_and_their_order():
    cfg = LoopConfig(
        "x",
        2,
        (10, 5, 5),
        methods=("synpro", "repetition", "oracle"),
        generators=(GEN,),
        oracle_budget_tokens=(200, 400),
    )
    assert method_names(cfg) == [
        ("synpro", "synpro", None),
        ("repetition", "repetition", None),
        ("oracle_200", "oracle", 200),
        ("oracle_400", "oracle", 400),
    ]
    order = [(run, plan.key) for run, _, _, plan in stage_order(cfg)]
    assert order[:2] == [("synpro", "r0/pretrain"), ("synpro", "r0/eval")]  # round 0 once, shared
    assert [run for run, key in order if key == "r1/pretrain"] == ["synpro", "repetition", "oracle_200", "oracle_400"]
    first_r2 = next(i for i, (_, key) in enumerate(order) if key.startswith("r2/"))
    assert all(key.startswith("r1/") for _, key in order[2:first_r2])  # round by round across the runs
    assert isinstance(cfg.generators[0], GeneratorSpec)  # gin gives dicts


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(steps=(10, 5)), r"LoopConfig.steps=\(10, 5\): give 3 step counts"),
        (dict(steps=(10, 0, 5)), "step counts are positive integers"),
        (dict(methods=("synpro", "best")), "LoopConfig.methods"),
        (dict(methods=("synpro", "oracle")), "LoopConfig.oracle_budget_tokens"),
        (dict(oracle_budget_tokens=(100,)), "LoopConfig.oracle_budget_tokens"),
        (dict(methods=("oracle",), generators=(), oracle_budget_tokens=(100, 100)), "distinct positive"),
        (dict(generators=()), "LoopConfig.generators: method 'synpro' needs"),
        (dict(mixing="rates"), "LoopConfig.mixing"),
        (dict(rounds=-1, steps=()), "LoopConfig.rounds"),
    ],
)
def test_bad_settings_name_the_knob(kwargs, message):
    base = dict(out_dir="x", rounds=2, steps=(10, 5, 5), generators=(GEN,))
    with pytest.raises(ValueError, match=message):
        LoopConfig(**{**base, **kwargs})


def test_generator_grpo_steps_per_training_round():
    g = GeneratorSpec("reformat", "reformat", "hf/x", grpo_steps=(240, 120))
    assert [g.steps_in(r) for r in (1, 2, 3)] == [240, 120, 120]
    late = GeneratorSpec("rephrase", "rephrase", "hf/x", train_rounds=(2, 3), grpo_steps=[300, 180])
    assert late.steps_in(2) == 300 and late.steps_in(3) == 180  # counted over its own training rounds
    assert GeneratorSpec("g", "rephrase", "hf/x").steps_in(1) is None  # GRPORunConfig.num_steps
    with pytest.raises(ValueError, match=r"GeneratorSpec\(g\).grpo_steps"):
        GeneratorSpec("g", "rephrase", "hf/x", grpo_steps=(0,))


class _Data:
    mixing = {"organic": 2}


def _settings(data) -> StageSettings:
    """Stage templates around ``data`` with placeholders for what these checks never read."""
    unused = object()
    reformat = GeneratorStages(
        grpo=GRPOJob(None, None, run=unused, rewards=unused),
        synthesize=SynthesizeJob(None, None, None, settings=unused),
    )
    return StageSettings(
        pretrain=PretrainJob(model=None, optimizer=None, trainer=unused, data=data),
        probe=ProbeJob(None, None, None, None, None, None),
        generators={"reformat": reformat},
    )


def _experiment(mixing):
    cfg = LoopConfig("x", 2, (10, 5, 5), generators=(GEN,), mixing=mixing)
    return experiment.Experiment(cfg, _settings(_Data()))


def test_the_synpro_mixture_spreads_a_generator_rate_over_its_rounds():
    synthetic = [("rephrase", 1), ("reformat", 1), ("reformat", 2)]
    rates = experiment.mixing_rates(_experiment({"organic": 3, "reformat": 1, "rephrase_r1": 0.5}), synthetic)
    assert rates == {"organic": 3, "rephrase_r1": 0.5, "reformat_r1": 0.5, "reformat_r2": 0.5}
    assert experiment.mixing_rates(_experiment(None), synthetic) == {"organic": 2}  # DataConfig.mixing
    assert experiment.mixing_rates(_experiment("tokens"), synthetic) == "tokens"
    with pytest.raises(ValueError, match=r"LoopConfig.mixing names \['summaries'\]"):
        experiment.mixing_rates(_experiment({"organic": 1, "summaries": 1}), synthetic)


def test_the_cpu_loop_experiment_parses_into_its_stage_settings():
    """gin/experiments/cpu_loop.gin: the loop's knobs, and each generator's rewards from its gin scope."""
    import gin

    from synpro_jax import configs

    configs.parse(["gin/experiments/cpu_loop.gin"], [])
    try:
        job, settings = configs.loop_job()
        cfg = job.config
        assert cfg.methods == ("synpro", "repetition", "oracle") and cfg.steps == (400, 150, 150)
        assert [g.start for g in cfg.generators] == [experiment.ROUND0_START] * 2
        assert [run for run, _, _ in method_names(cfg)] == ["synpro", "repetition", "oracle_400000", "oracle_800000"]
        for spec in cfg.generators:
            grpo = settings.generators[spec.name].grpo
            assert grpo.rewards.operation == spec.operation and grpo.run.num_steps == 20
            assert settings.generators[spec.name].synthesize.settings.operation == spec.operation
        assert set(grpo.rewards.weights) == {"data_influence", "faithfulness", "format"}  # reformat's own
        assert settings.pretrain.data is job.data and job.data.organic_budget_tokens == 200000
        assert settings.pretrain.trainer.num_steps == 400 and settings.probe.model is job.model
    finally:
        gin.clear_config()


def test_a_missing_generator_or_a_token_id_vocabulary_fails_before_any_work(tmp_path):
    from synpro_jax.data.vocab import PassthroughVocabulary

    class Data:
        vocabulary = "sp.model"

    cfg = LoopConfig(str(tmp_path / "exp"), 1, (4, 2), generators=({**GEN, "start": str(tmp_path / "nowhere")},))
    with pytest.raises(ValueError, match=r"GeneratorSpec\(reformat\).start=.*nowhere: not an HF OLMo-2 directory"):
        experiment.Experiment(cfg, _settings(Data())).check_generators()
    Data.vocabulary = PassthroughVocabulary(256)
    with pytest.raises(ValueError, match="PassthroughVocabulary .* need a text vocabulary"):
        experiment.Experiment(cfg, _settings(Data())).check_generators()
