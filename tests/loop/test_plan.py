"""The stage plan: round order, generator modes and train rounds, the growing mixture, and the baselines."""

import pytest

from synpro_jax.loop.plan import GeneratorSpec, plan_rounds


def keys(plan):
    return [s.key for s in plan]


def test_a_synpro_round_probes_trains_synthesizes_then_continues_and_evaluates():
    gens = [
        GeneratorSpec("rephrase", "rephrase", "hf/olmo2", train_rounds=(1,)),
        GeneratorSpec("reformat", "reformat", "hf/olmo2"),
    ]
    plan = plan_rounds(2, gens)
    assert keys(plan) == [
        "r0/pretrain",
        "r0/eval",
        "r1/probe",
        "r1/grpo_rephrase",
        "r1/grpo_reformat",
        "r1/synthesize_rephrase",
        "r1/synthesize_reformat",
        "r1/pretrain",
        "r1/eval",
        "r2/probe",
        "r2/grpo_reformat",
        "r2/synthesize_rephrase",
        "r2/synthesize_reformat",
        "r2/pretrain",
        "r2/eval",
    ]
    by = {s.key: s for s in plan}
    assert by["r1/probe"].reads == ("r0/pretrain",)
    assert by["r2/grpo_reformat"].policy_from == "start"  # fresh: from the starting weights each round
    assert by["r2/synthesize_rephrase"].policy_from == "r1/grpo_rephrase"  # not retrained: its round-1 policy
    assert by["r2/synthesize_reformat"].policy_from == "r2/grpo_reformat"
    # Earlier rounds stay in the mixture; each round continues from the one before.
    assert by["r1/pretrain"].synthetic == ("r1/synthesize_rephrase", "r1/synthesize_reformat")
    assert by["r2/pretrain"].synthetic == (
        "r1/synthesize_rephrase",
        "r1/synthesize_reformat",
        "r2/synthesize_rephrase",
        "r2/synthesize_reformat",
    )
    assert by["r2/pretrain"].reads[0] == "r1/pretrain"


def test_generator_modes():
    cont = GeneratorSpec("g", "reformat", "hf/start", mode="continue")
    by = {s.key: s for s in plan_rounds(3, [cont])}
    assert [by[f"r{r}/grpo_g"].policy_from for r in (1, 2, 3)] == ["start", "r1/grpo_g", "r2/grpo_g"]
    as_is = GeneratorSpec("g", "rephrase", "hf/start", mode="as_is")
    plan = plan_rounds(2, [as_is])
    assert not [s for s in plan if s.kind == "grpo"]
    assert {s.policy_from for s in plan if s.kind == "synthesize"} == {"start"}


def test_baselines_run_the_same_rounds_without_generators():
    for method in ("repetition", "oracle"):
        assert keys(plan_rounds(2, method=method)) == [
            "r0/pretrain",
            "r0/eval",
            "r1/pretrain",
            "r1/eval",
            "r2/pretrain",
            "r2/eval",
        ]


def test_bad_plans_are_refused_naming_the_knob():
    g = GeneratorSpec("g", "reformat", "hf/start")
    with pytest.raises(ValueError, match="needs at least one GeneratorSpec"):
        plan_rounds(1, [])
    with pytest.raises(ValueError, match="baseline without generators"):
        plan_rounds(1, [g], method="oracle")
    with pytest.raises(ValueError, match="choose one of"):
        plan_rounds(1, [g], method="best")
    with pytest.raises(ValueError, match="used twice"):
        plan_rounds(1, [g, g])
    with pytest.raises(ValueError, match=r"rounds \[3\] are beyond the loop's 2"):
        plan_rounds(2, [GeneratorSpec("g", "reformat", "hf/start", train_rounds=(1, 3))])
    with pytest.raises(ValueError, match="GeneratorSpec.operation"):
        GeneratorSpec("g", "summarize", "hf/start")
    with pytest.raises(ValueError, match="GeneratorSpec.mode"):
        GeneratorSpec("g", "reformat", "hf/start", mode="sometimes")
    with pytest.raises(ValueError, match="as_is' is never GRPO-trained"):
        GeneratorSpec("g", "reformat", "hf/start", mode="as_is", train_rounds=(1,))
    with pytest.raises(ValueError, match=r"train_rounds=\(0,\)"):
        GeneratorSpec("g", "reformat", "hf/start", train_rounds=(0,))
    with pytest.raises(ValueError, match="GeneratorSpec.name"):
        GeneratorSpec("Re-phrase", "rephrase", "hf/start")
