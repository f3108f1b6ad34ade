"""The stage templates a SynPro experiment runs from: every stage's settings, built once before the loop starts.

The loop owns a few fields of each stage and sets them per stage (see loop/runner.py): directories, the
checkpoints a stage reads (theta, theta', the policy), step counts, the operation and round, and the pretraining
mixture. Everything else comes from these templates, which the CLI builds from the same gin bindings a
single-stage run reads (``synpro.pretrain``, ``synpro.TrainerConfig``, ``synpro.probe``, ``synpro.grpo``,
``synpro.GRPORunConfig``, ``synpro.RewardsConfig``, ``synpro.synthesize``, ``synpro.SynthesisConfig``), each
generator's under the gin scope of its name (``reformat/synpro.RewardsConfig.weights = {...}``). From Python
they are plain objects: build them directly, or change one with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses

from synpro_jax.generation.run import SynthesizeJob
from synpro_jax.influence.run import ProbeJob
from synpro_jax.rl.run import GRPOJob
from synpro_jax.train.run import PretrainJob

__all__ = ["GeneratorStages", "StageSettings"]


@dataclasses.dataclass(frozen=True)
class GeneratorStages:
    """One generator's GRPO and synthesis templates. ``grpo.run`` and ``grpo.rewards`` (with the generator's
    operation) are set; the loop fills the policy, prompts, theta, theta', directory and steps. ``synthesize
    .settings`` has the generator's operation; the loop fills the policy, shards, directory and round."""

    grpo: GRPOJob
    synthesize: SynthesizeJob


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """``pretrain.trainer`` is the TrainerConfig template (the loop sets out_dir, num_steps, stop_on_plateau and
    data_start) and ``pretrain.data`` the round-0 DataConfig the later rounds extend. ``probe`` has the reference
    task and settings; the loop sets theta, the vocabulary and the directory. ``generators``: by name."""

    pretrain: PretrainJob
    probe: ProbeJob
    generators: Mapping[str, GeneratorStages] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """What the loop needs before it starts (the demo builds its templates before it knows the data)."""
        if self.pretrain.trainer is None or self.pretrain.data is None:
            raise ValueError("StageSettings.pretrain: give the TrainerConfig template and the round-0 DataConfig")
        for name, stages in self.generators.items():
            if stages.grpo.run is None or stages.grpo.rewards is None or stages.synthesize.settings is None:
                raise ValueError(
                    f"StageSettings.generators[{name!r}]: give grpo.run, grpo.rewards and synthesize.settings"
                )
