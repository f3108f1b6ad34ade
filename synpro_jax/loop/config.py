"""What a SynPro experiment runs (gin: ``synpro.LoopConfig``): rounds, step schedule, methods, generators, mixing
and evaluation. The stages' own settings come from their usual gin configurables (``synpro.TrainerConfig``,
``synpro.ProbeConfig``, ``synpro.GRPORunConfig``, ...); the loop only sets what it owns (see loop/runner.py)."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

from synpro_jax.eval.run import EvalConfig
from synpro_jax.loop.plan import METHODS, GeneratorSpec

__all__ = ["LoopConfig", "method_names"]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    out_dir: str  # the experiment directory: loop.json, r0/, <method>/r<k>/, tensorboard/, loop_summary.*
    rounds: int  # rounds after round 0
    # Pretraining steps of each round, round 0 first (rounds + 1 entries). Round 0 stops earlier when its
    # validation loss plateaus (stop_on_plateau); later rounds run exactly their steps for every method, so a
    # SynPro run and its baselines spend the same compute.
    steps: tuple[int, ...]
    stop_on_plateau: bool = True
    methods: tuple[str, ...] = ("synpro",)  # any of "synpro", "repetition", "oracle"
    generators: tuple[GeneratorSpec, ...] = ()
    # "oracle": one run per budget, each continuing from round 0 on this many unique organic tokens
    # (DataConfig.organic_budget_tokens); with repetition they are the points of the effective-token fit.
    oracle_budget_tokens: tuple[int, ...] = ()
    # The SynPro mixture: None keeps synpro.DataConfig.mixing; "tokens"; or rates keyed by "organic", a generator
    # name (split evenly over its rounds in the mix) or a task's short name ("reformat_r2").
    mixing: Any = None
    grpo_prompts: tuple[str, ...] | None = None  # GRPO's prompt documents (None: DataConfig.organic)
    # What each round's evaluation scores, as `synpro eval` (its flags are the same EvalConfig)
    evaluation: EvalConfig = EvalConfig()

    def __post_init__(self):
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"LoopConfig.rounds={self.rounds!r}: a non-negative integer (rounds after round 0)")
        steps = (self.steps,) if isinstance(self.steps, int) else tuple(self.steps or ())
        if len(steps) != self.rounds + 1:
            raise ValueError(
                f"LoopConfig.steps={self.steps!r}: give {self.rounds + 1} step counts (round 0, then "
                f"each of the {self.rounds} rounds)"
            )
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
            raise ValueError(f"LoopConfig.steps={self.steps!r}: step counts are positive integers")
        object.__setattr__(self, "steps", steps)
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods or len(set(methods)) != len(methods):
            raise ValueError(f"LoopConfig.methods={self.methods!r}: distinct entries of {METHODS}")
        object.__setattr__(self, "methods", methods)
        gens = tuple(GeneratorSpec(**g) if isinstance(g, Mapping) else g for g in self.generators)
        object.__setattr__(self, "generators", gens)
        if "synpro" in methods and self.rounds and not gens:
            raise ValueError("LoopConfig.generators: method 'synpro' needs at least one GeneratorSpec")
        budgets = tuple(self.oracle_budget_tokens or ())
        if ("oracle" in methods) != bool(budgets):
            raise ValueError(
                "LoopConfig.oracle_budget_tokens: give the oracle runs' unique-token budgets exactly "
                "when 'oracle' is among LoopConfig.methods"
            )
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in budgets) or len(set(budgets)) != len(
            budgets
        ):
            raise ValueError(
                f"LoopConfig.oracle_budget_tokens={self.oracle_budget_tokens!r}: distinct positive integers"
            )
        object.__setattr__(self, "oracle_budget_tokens", budgets)
        if self.mixing is not None and self.mixing != "tokens" and not isinstance(self.mixing, Mapping):
            raise ValueError(f"LoopConfig.mixing={self.mixing!r}: None, 'tokens' or a dict of rates")
        if isinstance(self.mixing, Mapping):
            object.__setattr__(self, "mixing", dict(self.mixing))
        for knob in ("grpo_prompts",):
            value = getattr(self, knob)
            if isinstance(value, str):
                object.__setattr__(self, knob, (value,))
            elif value is not None:
                object.__setattr__(self, knob, tuple(value))
        if not isinstance(self.evaluation, EvalConfig):
            raise ValueError(f"LoopConfig.evaluation={self.evaluation!r}: an EvalConfig (@synpro.EvalConfig())")

    def round_steps(self, round_: int) -> int:
        return self.steps[round_]


def method_names(cfg: LoopConfig) -> list[tuple[str, str, int | None]]:
    """(run name, method, oracle budget) of each run of the experiment: "synpro", "repetition", "oracle_<D>"."""
    out = []
    for method in cfg.methods:
        if method == "oracle":
            out += [(f"oracle_{budget}", method, budget) for budget in cfg.oracle_budget_tokens]
        else:
            out.append((method, method, None))
    return out
