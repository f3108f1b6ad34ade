"""What ``synpro demo`` runs (gin: ``synpro.DemoConfig``): the world's size, the oracle's unique data, and the
generators' teaching; the experiment itself is the loop's configuration in ``gin/experiments/demo.gin``."""

from __future__ import annotations

import dataclasses

from synpro_jax.demo.teach import TeachConfig

__all__ = ["DemoConfig", "MIN_ORACLE_RUNS"]

MIN_ORACLE_RUNS = 4  # with repetition, 5 ladder points: a fit of 3 parameters with 2 degrees of freedom


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out_dir: str
    seed: int = 0
    people: int = 300  # the organic population, one biography each
    teachers: int = 2000  # the disjoint teaching population
    reference_fraction: float = 0.5  # people in the probe's reference task; QA is asked about the others
    oracle_copies: int = 6  # unique biographies per person in the oracle's corpus
    # Each oracle run's unique biographies per person (1.5: a second biography for a random half of the people):
    # with repetition at 1, the rungs of the oracle ladder the effective tokens are read on.
    oracle_multiples: tuple[float, ...] = (1.5, 2, 3, 4, 6)
    vocab_size: int = 2048  # the world tokenizer's cap
    teach: TeachConfig = TeachConfig()
    samples: int = 3  # sample rewrites per generator in the report
    ablations: bool = False  # synpro demo --full: the no-GRPO and single-generator arms (demo/ablations.py)
    # Your own text instead of the world (synpro demo --corpus FILES --reference FILES [--generator HF_DIR]).
    corpus: tuple[str, ...] = ()
    reference: tuple[str, ...] = ()  # the probe's reference task for --corpus (FLAN .tsv, prompt/completion .jsonl)
    generator: str | None = None  # an HF instruct model both generators start from (default: taught / round 0)

    def __post_init__(self):
        if self.people < 8:
            raise ValueError(f"DemoConfig.people={self.people}: at least 8")
        if not 0 < self.reference_fraction < 1:
            raise ValueError(
                f"DemoConfig.reference_fraction={self.reference_fraction}: in (0, 1), so both the "
                "reference task and the QA evaluation have people"
            )
        multiples = tuple(self.oracle_multiples)
        if any(isinstance(m, bool) or not isinstance(m, (int, float)) for m in multiples):
            raise ValueError(
                f"DemoConfig.oracle_multiples={self.oracle_multiples!r}: numbers of biographies per person"
            )
        multiples = tuple(float(m) for m in multiples)
        object.__setattr__(self, "oracle_multiples", multiples)
        if (
            any(m <= 1 for m in multiples)
            or len(set(multiples)) != len(multiples)
            or list(multiples) != sorted(multiples)
        ):
            raise ValueError(
                f"DemoConfig.oracle_multiples={self.oracle_multiples!r}: distinct, increasing and above 1 "
                "(repetition is the ladder's rung at 1)"
            )
        if len(multiples) < MIN_ORACLE_RUNS:
            raise ValueError(
                f"DemoConfig.oracle_multiples={self.oracle_multiples!r}: give at least {MIN_ORACLE_RUNS}, so the "
                f"oracle ladder has {MIN_ORACLE_RUNS + 1} points with repetition and its fit has degrees of freedom"
            )
        if max(multiples) > self.oracle_copies:
            raise ValueError(
                f"DemoConfig.oracle_multiples={self.oracle_multiples!r}: at most "
                f"DemoConfig.oracle_copies={self.oracle_copies} biographies per person exist"
            )
        for knob in ("corpus", "reference"):
            value = getattr(self, knob)
            object.__setattr__(self, knob, (value,) if isinstance(value, str) else tuple(value or ()))
        if self.reference and not self.corpus:
            raise ValueError("DemoConfig.reference: the world brings its own reference task; give it with --corpus")
        if self.samples < 0:
            raise ValueError(f"DemoConfig.samples={self.samples}: must be >= 0")
