"""The stage plan of a SynPro experiment: which stages each round runs, in what order, and what each one reads.

Round 0 pretrains on organic data until the validation loss plateaus (or a step budget), then evaluates. Each
round r >= 1 then runs, in order:

1. ``probe``: the influence probe on round r-1's plateau checkpoint;
2. ``grpo_<generator>`` for each generator trained this round (``GeneratorSpec.train_rounds``);
3. ``synthesize_<generator>`` for every generator: this round's policy over the organic corpus;
4. ``pretrain``: continue from round r-1's checkpoint on the mixture of organic data and all synthetic rounds
   so far (earlier rounds stay in the mixture);
5. ``eval``.

A generator's policy in round r: ``as_is`` always uses its starting weights (no GRPO); ``fresh`` GRPO-trains from
the starting weights in each round it trains, and otherwise uses its last trained policy; ``continue``
GRPO-trains from its previous policy. The release re-trains only the reformat generator in later rounds
(``train_rounds=(1,)`` for rephrase).

The baselines run the same rounds without generators: ``repetition`` continues on the organic data alone and
``oracle`` continues on more unique organic data at the same compute. Their stages are ``pretrain`` and ``eval``
per round, so a SynPro run and its baselines line up round by round in one experiment directory.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

__all__ = ["GeneratorSpec", "StagePlan", "plan_rounds", "METHODS", "MODES"]

METHODS = ("synpro", "repetition", "oracle")
MODES = ("fresh", "continue", "as_is")
OPERATIONS = ("rephrase", "reformat")


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    """One generator of the loop (gin: ``synpro.GeneratorSpec``)."""

    name: str  # used in stage and task names, e.g. "reformat"
    operation: str  # "rephrase" or "reformat"
    start: str  # the starting policy: an HF directory, or "r0/pretrain" (round 0's LM, for runs without one)
    mode: str = "fresh"  # "fresh", "continue" or "as_is" (see the module docstring)
    train_rounds: tuple[int, ...] | None = None  # rounds (>= 1) it is GRPO-trained in; None: every round
    # GRPO steps in the rounds it trains in (the i-th entry for its i-th training round, the last one after
    # that); None: synpro.GRPORunConfig.num_steps. The release: rephrase 300, reformat (240, 120).
    grpo_steps: int | tuple[int, ...] | None = None

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum() or not self.name.islower():
            raise ValueError(f"GeneratorSpec.name={self.name!r}: use lower-case letters, digits and underscores")
        if self.operation not in OPERATIONS:
            raise ValueError(f"GeneratorSpec.operation={self.operation!r}: choose one of {OPERATIONS}")
        if self.mode not in MODES:
            raise ValueError(f"GeneratorSpec.mode={self.mode!r}: choose one of {MODES}")
        if not self.start:
            raise ValueError(f"GeneratorSpec({self.name}).start: give the starting policy's HF directory")
        if self.train_rounds is not None:
            rounds = tuple(self.train_rounds)
            if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rounds):
                raise ValueError(
                    f"GeneratorSpec({self.name}).train_rounds={self.train_rounds!r}: rounds are integers >= 1"
                )
            object.__setattr__(self, "train_rounds", tuple(sorted(set(rounds))))
        if self.grpo_steps is not None:
            steps = (self.grpo_steps,) if isinstance(self.grpo_steps, int) else tuple(self.grpo_steps)
            if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
                raise ValueError(
                    f"GeneratorSpec({self.name}).grpo_steps={self.grpo_steps!r}: a positive integer "
                    "or a tuple of them (one per training round)"
                )
            object.__setattr__(self, "grpo_steps", steps)
        if self.mode == "as_is" and self.train_rounds:
            raise ValueError(
                f"GeneratorSpec({self.name}): mode 'as_is' is never GRPO-trained, so train_rounds must be empty"
            )

    def steps_in(self, round_: int) -> int | None:
        """GRPO steps of its training in ``round_`` (None: the GRPORunConfig's)."""
        if self.grpo_steps is None:
            return None
        nth = sum(self.trains_in(r) for r in range(1, round_))  # training rounds before this one
        return self.grpo_steps[min(nth, len(self.grpo_steps) - 1)]

    def trains_in(self, round_: int) -> bool:
        if self.mode == "as_is":
            return False
        return self.train_rounds is None or round_ in self.train_rounds


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage: its round, its name in loop.json, its kind, and what it reads from earlier stages."""

    round: int
    name: str
    kind: str  # "pretrain", "probe", "grpo", "synthesize", "eval"
    generator: str | None = None
    reads: tuple[str, ...] = ()  # keys "r<round>/<name>" of the stages whose outputs it takes
    policy_from: str | None = None  # grpo/synthesize: the stage key whose policy it starts from ("start": spec)
    synthetic: tuple[str, ...] = ()  # pretrain: the synthesize stage keys in its mixture

    @property
    def key(self) -> str:
        return f"r{self.round}/{self.name}"


def plan_rounds(rounds: int, generators: Sequence[GeneratorSpec] = (), method: str = "synpro") -> list[StagePlan]:
    """Every stage of ``rounds`` rounds after round 0, in the order they run."""
    if method not in METHODS:
        raise ValueError(f"loop method {method!r}: choose one of {METHODS}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"loop rounds={rounds!r}: a non-negative integer (rounds after round 0)")
    generators = tuple(generators)
    if method == "synpro" and rounds and not generators:
        raise ValueError("loop method 'synpro' needs at least one GeneratorSpec")
    if method != "synpro" and generators:
        raise ValueError(f"loop method {method!r} is a baseline without generators; remove them")
    names = [g.name for g in generators]
    if len(set(names)) != len(names):
        raise ValueError(f"loop generators {names}: a name is used twice")
    for g in generators:
        late = [r for r in (g.train_rounds or ()) if r > rounds]
        if late:
            raise ValueError(
                f"GeneratorSpec({g.name}).train_rounds={g.train_rounds}: rounds {late} are beyond the loop's {rounds}"
            )
    plan = [StagePlan(0, "pretrain", "pretrain"), StagePlan(0, "eval", "eval", reads=("r0/pretrain",))]
    policy = {g.name: "start" for g in generators}  # the stage key each generator's current policy comes from
    synthetic: list[str] = []
    for r in range(1, rounds + 1):
        previous = f"r{r - 1}/pretrain"
        if method == "synpro":
            plan.append(StagePlan(r, "probe", "probe", reads=(previous,)))
            for g in generators:
                if g.trains_in(r):
                    start = "start" if g.mode == "fresh" else policy[g.name]
                    stage = StagePlan(
                        r, f"grpo_{g.name}", "grpo", g.name, reads=(previous, f"r{r}/probe"), policy_from=start
                    )
                    plan.append(stage)
                    policy[g.name] = stage.key
            for g in generators:
                stage = StagePlan(
                    r,
                    f"synthesize_{g.name}",
                    "synthesize",
                    g.name,
                    reads=(() if policy[g.name] == "start" else (policy[g.name],)),
                    policy_from=policy[g.name],
                )
                plan.append(stage)
                synthetic.append(stage.key)
        plan.append(StagePlan(r, "pretrain", "pretrain", reads=(previous, *synthetic), synthetic=tuple(synthetic)))
        plan.append(StagePlan(r, "eval", "eval", reads=(f"r{r}/pretrain",)))
    return plan
