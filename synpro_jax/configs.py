"""gin registration: the names gin files use (``synpro.*``), and the objects they describe, built once at the edge.

Three layers, as in t5x: ``gin/models/*.gin`` pick a model, ``gin/runs/*.gin`` set a run's knobs with
``%gin.REQUIRED`` macros for what each experiment must decide, and ``gin/experiments/*.gin`` include one of each
and fill the macros. Every configurable is a validated dataclass (a config, or a job's settings) or a small
function, registered here and nowhere else. The job bodies live in their packages and know nothing of gin
(``train/run.py``, ``influence/run.py``, ``generation/run.py``, ``rl/run.py``, ``loop/runner.py``,
``demo/runner.py``): the CLI parses the files (:func:`parse`, which checks every binding first; see
gin_files.py), builds a job's objects with the functions below and calls the job with them.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import inspect
from typing import Any

import gin

from synpro_jax import gin_files
from synpro_jax.gin_files import GinConfigError, did_you_mean, find_gin_file, gin_search_root, search_paths
from synpro_jax.models.config import ModelConfig
from synpro_jax.models.presets import get_preset
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig

__all__ = [
    "preset",
    "configurables",
    "parameters",
    "parse",
    "record",
    "build",
    "stage_settings",
    "loop_job",
    "demo_job",
    "bound",
    # read through configs by the CLI, sweep and compile: where gin files are found, and their one error
    "GinConfigError",
    "find_gin_file",
    "gin_search_root",
    "search_paths",
]

gin.external_configurable(MeshConfig, name="MeshConfig", module="synpro")
gin.external_configurable(OptimizerConfig, name="OptimizerConfig", module="synpro")
gin.external_configurable(ModelConfig, name="ModelConfig", module="synpro")


def _model_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig) if f.init]


@gin.configurable(module="synpro")
def preset(name: str = gin.REQUIRED, **overrides) -> ModelConfig:
    """A named model preset with field overrides (``synpro.preset.dtype = "bfloat16"``)."""
    unknown = sorted(set(overrides) - set(_model_fields()))
    if unknown:
        raise ValueError(
            f"synpro.preset.{unknown[0]}: ModelConfig has no field {unknown[0]!r}"
            f"{did_you_mean(unknown[0], _model_fields())}"
        )
    return get_preset(name, **overrides)


_LIGHT = {"MeshConfig": MeshConfig, "OptimizerConfig": OptimizerConfig, "ModelConfig": ModelConfig}
_REGISTERED: dict[str, Any] = {}


def configurables() -> dict[str, Any]:
    """Every configurable by its gin name (``synpro.<name>``), registered on the first call.

    Their modules import TensorFlow, seqio or the sampler, so they are imported here rather than at the top: a
    light command (``synpro presets``, ``synpro --version``) never loads them.
    """
    if not _REGISTERED:
        from synpro_jax.data.config import DataConfig, SyntheticShards
        from synpro_jax.data.vocab import PassthroughVocabulary, TrainedSentencePiece
        from synpro_jax.demo.config import DemoConfig
        from synpro_jax.demo.runner import DemoJob
        from synpro_jax.demo.teach import TeachConfig
        from synpro_jax.eval.run import EvalConfig
        from synpro_jax.generation.run import SynthesizeJob
        from synpro_jax.generation.synthesize import SynthesisConfig
        from synpro_jax.influence.probe import ProbeConfig
        from synpro_jax.influence.run import InfluenceServerJob, ProbeJob, finetuned_dir
        from synpro_jax.loop.config import LoopConfig
        from synpro_jax.loop.plan import GeneratorSpec
        from synpro_jax.loop.runner import LoopJob
        from synpro_jax.rl.config import GRPOConfig
        from synpro_jax.rl.rewards.config import RewardsConfig
        from synpro_jax.rl.rewards.judge_model import JudgeConfig
        from synpro_jax.rl.run import GRPOJob
        from synpro_jax.rl.trainer import GRPORunConfig
        from synpro_jax.rl.warm_start import WarmStartConfig
        from synpro_jax.train.run import PretrainJob
        from synpro_jax.train.trainer import TrainerConfig

        heavy = {
            cls.__name__: cls
            for cls in (DataConfig, SyntheticShards, PassthroughVocabulary, TrainedSentencePiece, TrainerConfig,
                        ProbeConfig, SynthesisConfig, GRPOConfig, RewardsConfig, GRPORunConfig, LoopConfig,
                        GeneratorSpec, DemoConfig, TeachConfig, WarmStartConfig, EvalConfig, JudgeConfig)
        }  # fmt: skip
        jobs = {
            "pretrain": PretrainJob,
            "probe": ProbeJob,
            "finetuned_dir": finetuned_dir,
            "influence_server": InfluenceServerJob,
            "synthesize": SynthesizeJob,
            "grpo": GRPOJob,
            "loop": LoopJob,
            "demo": DemoJob,
        }
        for name, obj in {**heavy, **jobs}.items():
            try:
                gin.external_configurable(obj, name=name, module="synpro")
            except ValueError:  # registered already in this process
                pass
            _REGISTERED[name] = obj
    return {**_LIGHT, **_REGISTERED}


def parameters() -> dict[str, list[str]]:
    """Full selector -> the parameter names it accepts, for every synpro configurable (what the checks of
    gin_files.parse compare bindings with)."""
    table = {}
    for name, obj in configurables().items():
        if dataclasses.is_dataclass(obj):
            table[f"synpro.{name}"] = [f.name for f in dataclasses.fields(obj) if f.init]
        else:
            params = inspect.signature(obj).parameters.values()
            table[f"synpro.{name}"] = [p.name for p in params if p.kind != p.VAR_KEYWORD]
    table["synpro.preset"] = list(dict.fromkeys(["name", *_model_fields()]))
    return table


def parse(gin_files_: Sequence[str], bindings: Sequence[str], gin_search_paths: Sequence[str] = ()) -> None:
    """Check and parse gin files and KEY=VALUE bindings (gin_files.parse against every synpro configurable);
    replaces any configuration parsed before."""
    gin_files.parse(gin_files_, bindings, parameters(), gin_search_paths)


def record() -> str:
    """The parsed configuration, as a job writes it to ``out_dir/config.gin``."""
    return gin.config_str()


def build(name: str, **overrides) -> Any:
    """The object gin's bindings describe for ``synpro.<name>`` (in the active gin scope), with ``overrides``
    over them. A field with no default and no binding fails naming the binding to set."""
    cls = configurables()[name]
    kwargs = {**gin.get_bindings(f"synpro.{name}"), **overrides}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.name not in kwargs
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise GinConfigError(
            f"synpro.{name}.{missing[0]} is not bound: set it in a gin file or with "
            f"--gin.synpro.{name}.{missing[0]}=VALUE"
        )
    return cls(**kwargs)


def stage_settings(model: ModelConfig, data: Any, round0_steps: int, generators: Sequence[tuple[str, str]]):
    """The loop's stage templates (loop/settings.py) from the single-stage bindings; each generator's
    (name, operation) under the gin scope of its name. ``data`` None: the caller sets it (the demo)."""
    from synpro_jax.loop.settings import GeneratorStages, StageSettings  # heavy, as in configurables()

    trainer = build("TrainerConfig", num_steps=round0_steps)  # the loop sets out_dir and steps per stage
    pretrain = build("pretrain", model=model, trainer=trainer, data=data)
    stages = {}
    for name, operation in generators:
        with gin.config_scope(name):
            grpo = build("grpo", run=build("GRPORunConfig"), rewards=build("RewardsConfig", operation=operation))
            settings = build("SynthesisConfig", operation=operation, round=1)
            stages[name] = GeneratorStages(grpo=grpo, synthesize=build("synthesize", settings=settings))
    return StageSettings(pretrain=pretrain, probe=build("probe", model=model), generators=stages)


def loop_job():
    """(the LoopJob of ``synpro.loop``, its StageSettings) for ``synpro loop``."""
    job = build("loop")
    gens = [(g.name, g.operation) for g in job.config.generators]
    return job, stage_settings(job.model, job.data, job.config.steps[0], gens)


def demo_job():
    """(the DemoJob of ``synpro.demo``, its DemoExperiment) for ``synpro demo``: the loop's and the data's knobs
    as bound (the demo adds its files' paths and budgets) and the stage templates of its two generators."""
    from synpro_jax.demo.runner import OPERATIONS, DemoExperiment

    job = build("demo")
    loop = gin.get_bindings("synpro.LoopConfig")
    steps = loop.get("steps")
    round0 = steps if isinstance(steps, int) else tuple(steps)[0]
    stages = stage_settings(job.model, None, round0, [(op, op) for op in OPERATIONS])
    return job, DemoExperiment(loop=loop, data=gin.get_bindings("synpro.DataConfig"), stages=stages)


_UNSET = object()


def bound(name: str, default: Any = _UNSET) -> Any:
    """The value gin binds to ``name`` (``"synpro.TrainerConfig.seq_len"``) with its references evaluated, so a
    bound config class is constructed and validated; ``default`` when unbound (an error naming it without one)."""
    try:
        value = gin.query_parameter(name)
    except ValueError:
        if default is _UNSET:
            raise ValueError(f"{name} is not bound by the gin files") from None
        return default
    return _evaluate(value)


def _evaluate(value: Any) -> Any:
    if isinstance(value, gin.config.ConfigurableReference):
        return value.scoped_configurable_fn() if value.evaluate else value
    if isinstance(value, (list, tuple)):
        return type(value)(_evaluate(v) for v in value)
    if isinstance(value, dict):
        return {k: _evaluate(v) for k, v in value.items()}
    return value
