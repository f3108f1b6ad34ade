"""``synpro grpo``'s job body: train a rephrase/reformat generator with GRPO (resumable; see rl/trainer.py).

Called by the CLI once gin has built the job (``synpro.grpo``) and by the loop for each GRPO stage. It opens the
generator (train/model_source.py), theta and theta' for the ``data_influence`` reward, the optional warm start
(rl/warm_start.py) and the reward suite, fingerprints all of them for the trainer's resume check, and runs the
trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import json
import os
from typing import Any

from etils.epath import Path
import jax

from synpro_jax import distributed, sharding
from synpro_jax.data.corpus import encoder_for
from synpro_jax.errors import ConfigError
from synpro_jax.generation.synthesize import _canonical_generator, weights_identity
from synpro_jax.influence.probe import Probe
from synpro_jax.influence.run import files_fingerprint, load_finetuned, vocabulary_fingerprint
from synpro_jax.models.config import ModelConfig
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.rl.prompt_set import PromptSet
from synpro_jax.rl.rewards.config import RewardsConfig, build_suite
from synpro_jax.rl.rewards.influence import probe_scorer
from synpro_jax.rl.rewards.judge_model import judge_runtime
from synpro_jax.rl.rewards.similarity import LMEmbedder
from synpro_jax.rl.trainer import GRPORunConfig, GRPOTrainer
from synpro_jax.rl.warm_start import WarmStartConfig, run_warm_start
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.model_source import Knobs, open_source, stop_token_ids
from synpro_jax.train.params_io import load

__all__ = ["GRPOJob", "grpo"]

KNOBS = Knobs("synpro.grpo.generator", "synpro.grpo.model", "synpro.grpo.vocabulary")
INFLUENCE_KNOBS = Knobs(
    "synpro.grpo.influence_checkpoint", "synpro.grpo.influence_model", "synpro.grpo.influence_vocabulary"
)


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


@dataclasses.dataclass(frozen=True)
class GRPOJob:
    """What ``synpro grpo`` runs (gin: ``synpro.grpo``).

    ``generator``: the starting generator, an HF Olmo2 directory or a synpro run (then ``model``); it is also the
    frozen KL reference. ``prompts``: organic files whose documents become the prompts. ``run``: a GRPORunConfig;
    ``algorithm``: a GRPOConfig (default: the release's settings); ``rewards``: a RewardsConfig.
    ``data_influence`` needs theta (``influence_checkpoint``, the pretraining run or HF directory;
    ``influence_model`` unless it is an HF directory) and theta' (``influence_finetuned``, the probe's finetuned
    directory, checked to come from theta); its texts are tokenized with ``influence_vocabulary`` (default: the
    generator's). ``similarity_local`` embeds with the frozen starting generator. ``warm_start``: a
    WarmStartConfig, supervised steps before GRPO. ``judges``: family (quality, structure, faithfulness) -> a
    JudgeConfig or an HF directory, the judge model of each family whose RewardsConfig.variants entry is an
    in-process judge (``quality_judge``, ...; rl/rewards/judge_model.py), loaded on the run's mesh; entries for
    families judged otherwise are not loaded. The loop keeps a job per generator, with ``generator``,
    ``prompts`` and the influence paths None, as its template.
    """

    generator: str | None
    prompts: Any
    run: GRPORunConfig | None
    rewards: RewardsConfig | None
    algorithm: GRPOConfig | None = None
    model: ModelConfig | None = None
    mesh: MeshConfig = MeshConfig()
    vocabulary: str | None = None
    stop_tokens: Sequence[str] = ()
    dtype: str | None = None
    influence_checkpoint: str | None = None
    influence_finetuned: str | None = None
    influence_model: ModelConfig | None = None
    influence_vocabulary: str | None = None
    influence_max_len: int = 1024
    influence_batch_size: int = 8
    similarity_max_len: int = 512
    similarity_batch_size: int = 8
    warm_start: WarmStartConfig | None = None
    judges: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _influence_scorer(job: GRPOJob, mesh, vocab_spec: str) -> tuple[Any, dict]:
    """The data_influence reward's scorer (theta and theta' on the mesh) and its fingerprint."""
    if not job.influence_checkpoint or not job.influence_finetuned:
        raise ConfigError(
            "RewardsConfig.weights has data_influence: set synpro.grpo.influence_checkpoint "
            "(theta, the pretraining run) and synpro.grpo.influence_finetuned (theta', the probe's "
            "finetuned directory)"
        )
    source = open_source(
        job.influence_checkpoint,
        job.influence_model,
        vocabulary=job.influence_vocabulary or vocab_spec,
        knobs=INFLUENCE_KNOBS,
    )
    model, ivocab = source.config, source.vocab
    theta = load(model, mesh, job.influence_checkpoint)
    tuned = load_finetuned(model, job.influence_finetuned, theta)  # refuses a theta' of another theta
    probe = Probe(model, mesh, theta.params, tuned, max_len=job.influence_max_len)
    scorer = probe_scorer(probe, encoder_for(ivocab), job.influence_batch_size, pad_id=ivocab.pad_id)
    fingerprint = {
        "theta": _canonical_generator(str(job.influence_checkpoint)),
        "theta_step": theta.step,
        "finetuned": _canonical_generator(str(job.influence_finetuned)),
        "max_len": job.influence_max_len,
        "batch_size": job.influence_batch_size,
        "vocabulary": vocabulary_fingerprint(source.vocabulary, ivocab),
    }
    return scorer, fingerprint


def grpo(job: GRPOJob, record: str | None = None) -> dict:
    """Train (resuming from ``job.run.out_dir``); returns the run's summary. ``record``, the configuration text,
    becomes ``out_dir/config.gin`` once the trainer accepted the directory."""
    for knob in ("generator", "prompts", "run", "rewards"):
        if getattr(job, knob) is None:
            raise ConfigError(f"synpro.grpo.{knob}: not set")
    run, rewards, warm_start = job.run, job.rewards, job.warm_start
    algorithm = job.algorithm or GRPOConfig()
    source = open_source(job.generator, job.model, vocabulary=job.vocabulary, dtype=job.dtype, knobs=KNOBS)
    model, vocab, vocab_spec = source.config, source.vocab, source.vocabulary
    stop_ids = stop_token_ids(vocab, job.stop_tokens, "synpro.grpo.stop_tokens")
    mesh = sharding.make_mesh(job.mesh)
    runtime, extra_fp = {}, {}
    if "data_influence" in rewards.weights and rewards.variant("data_influence") == "data_influence":
        runtime["scorer"], extra_fp["influence"] = _influence_scorer(job, mesh, vocab_spec)
    judges, judges_fp = judge_runtime(rewards, job.judges, mesh)  # the in-process judges' models, on the mesh
    runtime.update(judges)
    if judges_fp:
        extra_fp["judges"] = judges_fp
    loaded = load(model, mesh, job.generator)
    start_identity = {
        "path": _canonical_generator(str(job.generator)),
        "step": loaded.step,
        "weights": weights_identity(loaded.params),
    }
    prompt_set = PromptSet(
        _as_tuple(job.prompts),
        vocab,
        rewards.operation,
        max_prompt_tokens=algorithm.max_prompt_tokens,
        max_source_chars=run.max_source_chars,
        min_source_chars=run.min_source_chars,
        max_documents=run.max_documents,
        text_field=run.text_field,
        id_field=run.id_field,
        seed=run.seed,
    )
    if warm_start is not None:
        warm_dir = Path(run.out_dir) / "warm_start"
        warm = run_warm_start(
            warm_start,
            model,
            mesh,
            loaded.params,
            vocab,
            warm_dir,
            operation=rewards.operation,
            max_prompt_tokens=algorithm.max_prompt_tokens,
            max_source_chars=run.max_source_chars,
            eval_prompts=[it.ids for it in prompt_set.items[-warm_start.eval_prompts :]],
            sampling={
                "num_generations": algorithm.num_generations,
                "max_new_tokens": algorithm.max_completion_tokens,
                "temperature": algorithm.temperature,
                "top_p": algorithm.top_p,
                "stop_ids": sorted({int(vocab.eos_id), *stop_ids}),
            },
            inputs={"generator": start_identity, "vocabulary": vocabulary_fingerprint(vocab_spec, vocab)},
            progress=run.progress,
        )
        if warm.get("preempted"):  # SIGTERM during the warm start: its checkpoint is saved, GRPO has not begun
            return {"steps": 0, "preempted": True, "warm_start_steps": warm["steps"], "out_dir": str(run.out_dir)}
        if jax.process_index() == 0:
            print(
                f"warm start: {warm['steps']} supervised steps on {warm['rows']} rows; sampled completions with "
                f"one heading {warm['after']['format_rate']:.2f}, stopped {warm['after']['stopped']:.2f}"
            )
        del loaded
        loaded = load(model, mesh, warm_dir)
        extra_fp["warm_start"] = {
            "config": json.loads(json.dumps(dataclasses.asdict(warm_start), default=str)),
            "weights": weights_identity(loaded.params),
        }
    if "similarity" in rewards.weights and rewards.variant("similarity") == "similarity_local":
        extra_fp["similarity"] = {"max_len": job.similarity_max_len, "embedder": "the starting generator"}
        runtime["embedder"] = LMEmbedder(
            model,
            loaded.params,
            encoder_for(vocab),
            mesh=mesh,
            max_len=job.similarity_max_len,
            batch_size=job.similarity_batch_size,
        )
    suite = build_suite(rewards, **runtime)
    fingerprint = {
        "generator": start_identity,
        "vocabulary": vocabulary_fingerprint(vocab_spec, vocab),
        "rewards": json.loads(json.dumps(dataclasses.asdict(rewards), default=str)),
        "prompt_files": files_fingerprint(_as_tuple(job.prompts)),
        **extra_fp,
    }
    files = [vocab_spec] if isinstance(vocab_spec, (str, os.PathLike)) else []  # a Passthrough vocab has no file
    trainer = GRPOTrainer(
        model,
        mesh,
        loaded.params,
        vocab,
        prompt_set,
        suite,
        run,
        algorithm,
        stop_ids=stop_ids,
        fingerprint=fingerprint,
        vocabulary_files=files,
    )
    del loaded
    if jax.process_index() == 0:
        print(model.describe())
        print(
            f"mesh {sharding.devices_summary(mesh)} | {run.prompts_per_step} prompts x G="
            f"{algorithm.num_generations} per step | {len(prompt_set)} prompt documents | rewards "
            f"{dict(rewards.weights)} | {run.num_steps} steps -> {run.out_dir}"
        )
    # config.gin describes the checkpoints: written only once the trainer has accepted them
    return trainer.run(on_start=lambda: distributed.write_config_record(run.out_dir, record))
