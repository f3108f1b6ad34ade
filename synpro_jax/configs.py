"""gin registration and the gin-configured entry points (``synpro.*`` in gin files).

Three layers, as in t5x: ``gin/models/*.gin`` pick a model, ``gin/runs/*.gin`` set a run's knobs with
``%gin.REQUIRED`` macros for what each experiment must decide, and ``gin/experiments/*.gin`` include one of each
and fill the macros. Every configurable is a validated dataclass or a function, so a wrong value fails with a
message naming the knob, and an unknown knob, an unknown or unset macro fails when the files are parsed, before
any work starts (:func:`parse`).

The ``gin/`` files ship inside the package (``synpro_jax/gin`` in a wheel; the checkout's ``gin/`` in an editable
install), so ``--gin_file=gin/experiments/markov_tiny.gin`` and the files' ``include`` lines resolve from any
working directory: gin looks in the working directory, then in ``--gin_search_paths``, then beside the package.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import difflib
import inspect
import json
import logging
import os
from typing import Any

from etils.epath import Path
import gin
from gin import config_parser

from synpro_jax.models.config import ModelConfig
from synpro_jax.models.presets import get_preset
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig

log = logging.getLogger(__name__)


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
            f"{_did_you_mean(unknown[0], _model_fields())}"
        )
    return get_preset(name, **overrides)


def _register(*classes) -> None:
    for cls in classes:
        try:
            gin.external_configurable(cls, name=cls.__name__, module="synpro")
        except ValueError:  # already registered in this process
            pass


def _lazy_configurables() -> tuple[type, ...]:
    """Config classes whose modules import TensorFlow/seqio or the sampler: registered only when gin is parsed.
    Returns every configurable class, for checking parameter names."""
    from synpro_jax.data.config import DataConfig, SyntheticShards
    from synpro_jax.data.vocab import PassthroughVocabulary, TrainedSentencePiece
    from synpro_jax.demo.config import DemoConfig
    from synpro_jax.demo.teach import TeachConfig
    from synpro_jax.generation.synthesize import SynthesisConfig
    from synpro_jax.influence.probe import ProbeConfig
    from synpro_jax.loop.config import LoopConfig
    from synpro_jax.loop.plan import GeneratorSpec
    from synpro_jax.rl.config import GRPOConfig
    from synpro_jax.rl.rewards.config import RewardsConfig
    from synpro_jax.rl.trainer import GRPORunConfig
    from synpro_jax.rl.warm_start import WarmStartConfig
    from synpro_jax.train.trainer import TrainerConfig

    lazy = (
        DataConfig,
        SyntheticShards,
        PassthroughVocabulary,
        TrainedSentencePiece,
        TrainerConfig,
        ProbeConfig,
        SynthesisConfig,
        GRPOConfig,
        RewardsConfig,
        GRPORunConfig,
        LoopConfig,
        GeneratorSpec,
        DemoConfig,
        TeachConfig,
        WarmStartConfig,
    )
    _register(*lazy)
    return (MeshConfig, OptimizerConfig, ModelConfig) + lazy


def _as_tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


@gin.configurable(module="synpro")
def pretrain(
    model: ModelConfig = gin.REQUIRED,
    mesh: MeshConfig = MeshConfig(),
    optimizer: OptimizerConfig = gin.REQUIRED,
    trainer=gin.REQUIRED,
    data=gin.REQUIRED,
    init_from_hf: str | None = None,
    init_from: str | None = None,
) -> dict:
    """Build the data streams and the trainer, then train (resuming from ``trainer.out_dir`` if it holds a
    checkpoint). Returns the trainer's summary.

    ``init_from_hf`` starts from an HF directory's weights. ``init_from`` continues another synpro run (its
    latest checkpoint: weights, AdamW moments and step, so the schedule goes on), e.g. a SynPro round going on
    from the plateau checkpoint on a new mixture; an HF directory there gives the weights only.
    """
    import jax

    from synpro_jax import sharding
    from synpro_jax.data.streams import build_streams, summarize
    from synpro_jax.data.tasks import organic_task_name
    from synpro_jax.models import hf
    from synpro_jax.train.trainer import Trainer

    init_params, init_adam, init_step, init_source = None, None, 0, ""
    if init_from_hf and init_from:
        raise ValueError("synpro.pretrain: set init_from_hf or init_from, not both")
    mesh_obj = sharding.make_mesh(mesh)
    if init_from:
        from synpro_jax.train import params_io

        loaded = params_io.load(model, mesh_obj, init_from, with_adam=True)
        init_params, init_adam, init_step = loaded.params, loaded.adam, loaded.step
        init_source = f"{loaded.source}@{loaded.step}"
    if init_from_hf:
        hf_cfg, init_params = hf.load(init_from_hf)
        if (hf_cfg.d_model, hf_cfg.num_layers, hf_cfg.vocab_size) != (
            model.d_model,
            model.num_layers,
            model.vocab_size,
        ):
            raise ValueError(
                f"synpro.pretrain.init_from_hf={init_from_hf}: {hf_cfg.describe()} does not match "
                f"the configured model {model.describe()}"
            )
    streams = build_streams(data, trainer.seq_len, progress=trainer.progress)
    if streams.info["vocab_size"] > model.vocab_size:
        raise ValueError(
            f"the vocabulary has {streams.info['vocab_size']} tokens but the model's vocab_size is "
            f"{model.vocab_size}; set synpro.preset.vocab_size"
        )
    if jax.process_index() == 0:
        print(model.describe())
        print(
            f"mesh {sharding.devices_summary(mesh_obj)} | global batch {trainer.global_batch} x seq "
            f"{trainer.seq_len} | {trainer.num_steps} steps -> {trainer.out_dir}"
        )
        print(summarize(streams.info))
    runner = Trainer(
        model,
        mesh_obj,
        optimizer,
        trainer,
        streams.train,
        streams.validation,
        init_params,
        data_fingerprint=streams.info["fingerprint"],
        summary_extra={
            "organic_unigram_entropy": streams.info["organic_unigram_entropy"],
            "organic_tokens": streams.info["tasks"][organic_task_name(data.corpus)]["tokens"],
            "start_step": init_step,
        },
        init_adam=init_adam,
        init_step=init_step,
        init_source=init_source,
    )
    # config.gin describes the checkpoints: written only once the trainer has accepted them
    return runner.run(on_start=lambda: _write_config(trainer.out_dir))


@gin.configurable(module="synpro")
def probe(
    model: ModelConfig = gin.REQUIRED,
    mesh: MeshConfig = MeshConfig(),
    checkpoint: str = gin.REQUIRED,
    vocabulary: str = gin.REQUIRED,
    reference=gin.REQUIRED,
    corpus=gin.REQUIRED,
    out_dir: str = gin.REQUIRED,
    settings=None,
    text_field: str = "text",
    max_len: int = 2048,
    batch_size: int = 32,
    max_reference_examples: int | None = None,
    chunk_docs: int = 512,
) -> dict:
    """The influence probe: fine-tune theta' on the reference task, then score every corpus document (saved in
    parts of ``chunk_docs`` documents: what a killed job keeps)."""
    from synpro_jax import sharding
    from synpro_jax.influence.probe import ProbeConfig
    from synpro_jax.influence.run import probe_and_score

    mesh_obj = sharding.make_mesh(mesh)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _write_config(out_dir)
    return probe_and_score(
        model,
        mesh_obj,
        checkpoint,
        vocabulary,
        _as_tuple(reference),
        _as_tuple(corpus),
        out_dir,
        settings or ProbeConfig(),
        text_field=text_field,
        max_len=max_len,
        batch_size=batch_size,
        max_reference_examples=max_reference_examples,
        chunk_docs=chunk_docs,
    )


@gin.configurable(module="synpro")
def finetuned_dir(probe_out: str = gin.REQUIRED) -> str:
    """theta' written by `synpro probe` into its out_dir."""
    return str(Path(probe_out) / "finetuned")


@gin.configurable(module="synpro")
def influence_server(
    model: ModelConfig = gin.REQUIRED,
    mesh: MeshConfig = MeshConfig(),
    checkpoint: str = gin.REQUIRED,
    finetuned: str = gin.REQUIRED,
    vocabulary: str = gin.REQUIRED,
    max_len: int = 2048,
    batch_size: int = 32,
    host: str = "127.0.0.1",
    port: int = 24775,
    max_texts: int = 256,
    max_queued: int = 64,
    timeout_s: float = 600.0,
    socket_timeout_s: float = 30.0,
    retry_after_s: int = 5,
) -> None:
    """Serve POST /get_influence and GET /health for theta (checkpoint) and theta' (the probe's finetuned dir).
    ``max_queued`` requests wait for the device (more get 503 with Retry-After); ``timeout_s`` bounds a request's
    wait, ``socket_timeout_s`` each socket read and write."""
    from synpro_jax import sharding
    from synpro_jax.data.corpus import encoder_for
    from synpro_jax.data.vocab import load_vocabulary
    from synpro_jax.influence.probe import Probe
    from synpro_jax.influence.run import load_pair
    from synpro_jax.influence.service import InfluenceServer

    mesh_obj = sharding.make_mesh(mesh)
    vocab = load_vocabulary(vocabulary)
    params, tuned = load_pair(model, mesh_obj, checkpoint, finetuned)  # theta' checked to come from this theta
    probe_obj = Probe(model, mesh_obj, params, tuned, max_len=max_len)
    server = InfluenceServer(
        probe_obj,
        encoder_for(vocab),
        host=host,
        port=port,
        batch_size=batch_size,
        max_texts=max_texts,
        pad_id=vocab.pad_id,
        max_queued=max_queued,
        timeout_s=timeout_s,
        socket_timeout_s=socket_timeout_s,
        retry_after_s=retry_after_s,
    )
    print(
        f"serving influence on http://{server.address[0]}:{server.address[1]} (POST /get_influence, GET /health)",
        flush=True,
    )
    server.serve_forever()


def _generator_setup(
    generator: str,
    model: ModelConfig | None,
    vocabulary: str | None,
    stop_tokens: Sequence[str],
    dtype: str | None,
    stage: str,
):
    """(model config, vocabulary, vocabulary spec, stop ids) of a generator: an HF Olmo2 directory (its
    config.json and tokenizer.json/.model are the defaults) or a synpro run (``model`` and ``vocabulary`` needed)."""
    from synpro_jax.data.vocab import find_vocabulary, load_vocabulary

    path = Path(generator)
    if model is None:
        if not (path / "config.json").exists():
            raise ValueError(f"synpro.{stage}.generator={generator}: not an HF directory, so set synpro.{stage}.model")
        from synpro_jax.models import hf

        model = hf.read_config(path)
    if dtype is not None:
        model = model.replace(dtype=dtype)
    if vocabulary is None:
        found = find_vocabulary(path)
        if found is None:
            raise ValueError(
                f"synpro.{stage}.vocabulary: {generator} has no tokenizer.json or tokenizer.model; "
                "name the generator's vocabulary"
            )
        vocabulary = str(found)
    vocab = load_vocabulary(vocabulary)
    stop_ids = []
    for token in stop_tokens:
        ids = list(vocab.encode(token))
        if len(ids) != 1:
            raise ValueError(f"synpro.{stage}.stop_tokens: {token!r} is {len(ids)} tokens, not one")
        stop_ids.extend(ids)
    return model, vocab, vocabulary, stop_ids


@gin.configurable(module="synpro")
def synthesize(
    generator: str = gin.REQUIRED,
    shards=gin.REQUIRED,
    out_dir: str = gin.REQUIRED,
    settings=gin.REQUIRED,
    model: ModelConfig | None = None,
    mesh: MeshConfig = MeshConfig(),
    vocabulary: str | None = None,
    stop_tokens: Sequence[str] = (),
    dtype: str | None = None,
    progress: bool = True,
    documents: str | Sequence[str] | None = None,
) -> dict:
    """Run a generator over organic shards into out_dir (resumable; see generation/synthesize.py).

    ``generator`` is an HF Olmo2 directory (its config.json gives the model unless ``model`` is set; its
    tokenizer.json or tokenizer.model is the default vocabulary) or a synpro run/checkpoint directory (then
    ``model`` and
    ``vocabulary`` are required). ``stop_tokens`` end a completion besides the vocabulary's EOS; ``dtype``
    ("bfloat16") overrides the compute dtype. ``documents`` limits synthesis to these source ids: a text file of
    one id per line, or the ids themselves (the loop passes its training split, never the validation documents).
    """
    from synpro_jax import sharding
    from synpro_jax.generation.synthesize import Synthesizer

    if isinstance(documents, (str, os.PathLike)):
        try:
            documents = [line for line in Path(documents).read_text(encoding="utf-8").splitlines() if line]
        except OSError as e:
            raise ValueError(f"synpro.synthesize.documents={documents}: {e}") from None
    from synpro_jax.train.params_io import load_params_and_step, per_host

    model, vocab, _, stop_ids = _generator_setup(generator, model, vocabulary, stop_tokens, dtype, "synthesize")
    mesh_obj = sharding.make_mesh(mesh)
    params, step = load_params_and_step(model, mesh_obj, generator)
    mesh_obj, params = per_host(model, mesh_obj, params)  # each host samples its own documents (Synthesizer.run)
    synth = Synthesizer(
        model,
        params,
        vocab,
        settings,
        mesh=mesh_obj,
        generator=str(generator),
        generator_step=step,
        stop_ids=stop_ids,
        documents=documents,
    )
    del params  # the sampler holds its own cast, per-layer copy
    manifest = synth.run(_as_tuple(shards), out_dir, progress=progress)
    _write_config(out_dir)
    return manifest


@gin.configurable(module="synpro")
def grpo(
    generator: str = gin.REQUIRED,
    prompts=gin.REQUIRED,
    run=gin.REQUIRED,
    rewards=gin.REQUIRED,
    algorithm=None,
    model: ModelConfig | None = None,
    mesh: MeshConfig = MeshConfig(),
    vocabulary: str | None = None,
    stop_tokens: Sequence[str] = (),
    dtype: str | None = None,
    influence_checkpoint: str | None = None,
    influence_finetuned: str | None = None,
    influence_model: ModelConfig | None = None,
    influence_vocabulary: str | None = None,
    influence_max_len: int = 1024,
    influence_batch_size: int = 8,
    similarity_max_len: int = 512,
    similarity_batch_size: int = 8,
    warm_start=None,
) -> dict:
    """Train a rephrase/reformat generator with GRPO (resumable; see rl/trainer.py). Returns the run's summary.

    ``generator``: the starting generator, an HF Olmo2 directory or a synpro run (then ``model`` and
    ``vocabulary``); it is also the frozen KL reference. ``prompts``: organic files whose documents become the
    prompts. ``run``: a GRPORunConfig; ``algorithm``: a GRPOConfig (default: the release's settings);
    ``rewards``: a RewardsConfig. ``data_influence`` needs theta (``influence_checkpoint``, the pretraining
    run or HF directory; ``influence_model`` unless it is an HF directory) and theta' (``influence_finetuned``,
    the probe's finetuned directory, checked to come from theta); its texts are tokenized with
    ``influence_vocabulary`` (default: the generator's). ``similarity_local`` embeds with the frozen starting
    generator.
    """
    import jax

    from synpro_jax import sharding
    from synpro_jax.data.corpus import encoder_for
    from synpro_jax.generation.synthesize import _canonical_generator, weights_identity
    from synpro_jax.influence.run import files_fingerprint, vocabulary_fingerprint
    from synpro_jax.rl.config import GRPOConfig
    from synpro_jax.rl.prompt_set import PromptSet
    from synpro_jax.rl.rewards.config import build_suite
    from synpro_jax.rl.trainer import GRPOTrainer
    from synpro_jax.train.params_io import load

    algorithm = algorithm or GRPOConfig()
    model, vocab, vocab_spec, stop_ids = _generator_setup(generator, model, vocabulary, stop_tokens, dtype, "grpo")
    mesh_obj = sharding.make_mesh(mesh)
    runtime, extra_fp = {}, {}
    if "data_influence" in rewards.weights and rewards.variant("data_influence") == "data_influence":
        if not influence_checkpoint or not influence_finetuned:
            raise ValueError(
                "RewardsConfig.weights has data_influence: set synpro.grpo.influence_checkpoint "
                "(theta, the pretraining run) and synpro.grpo.influence_finetuned (theta', the probe's "
                "finetuned directory)"
            )
        from synpro_jax.data.vocab import load_vocabulary
        from synpro_jax.influence.probe import Probe
        from synpro_jax.influence.run import load_finetuned
        from synpro_jax.models import hf
        from synpro_jax.rl.rewards.influence import probe_scorer

        if influence_model is None:
            if not (Path(influence_checkpoint) / "config.json").exists():
                raise ValueError(
                    f"synpro.grpo.influence_checkpoint={influence_checkpoint} is not an HF "
                    "directory: set synpro.grpo.influence_model"
                )
            influence_model = hf.read_config(influence_checkpoint)
        ivocab_spec = influence_vocabulary or vocab_spec
        ivocab = load_vocabulary(ivocab_spec)
        if ivocab.vocab_size > influence_model.vocab_size:
            raise ValueError(
                f"synpro.grpo.influence_vocabulary: {ivocab_spec} has {ivocab.vocab_size} tokens but the "
                f"influence model's vocab_size is {influence_model.vocab_size}; name theta's own "
                "vocabulary"
            )
        theta = load(influence_model, mesh_obj, influence_checkpoint)
        tuned = load_finetuned(influence_model, influence_finetuned, theta)  # refuses a theta' of another theta
        probe = Probe(influence_model, mesh_obj, theta.params, tuned, max_len=influence_max_len)
        runtime["scorer"] = probe_scorer(probe, encoder_for(ivocab), influence_batch_size, pad_id=ivocab.pad_id)
        extra_fp["influence"] = {
            "theta": _canonical_generator(str(influence_checkpoint)),
            "theta_step": theta.step,
            "finetuned": _canonical_generator(str(influence_finetuned)),
            "max_len": influence_max_len,
            "batch_size": influence_batch_size,
            "vocabulary": vocabulary_fingerprint(ivocab_spec, ivocab),
        }
        del theta
    if vocab.vocab_size > model.vocab_size:
        raise ValueError(
            f"synpro.grpo.vocabulary: {vocab_spec} has {vocab.vocab_size} tokens but the generator's "
            f"vocab_size is {model.vocab_size}"
        )
    loaded = load(model, mesh_obj, generator)
    start_identity = {
        "path": _canonical_generator(str(generator)),
        "step": loaded.step,
        "weights": weights_identity(loaded.params),
    }
    prompt_set = PromptSet(
        _as_tuple(prompts),
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
        from synpro_jax.rl.warm_start import run_warm_start

        warm_dir = Path(run.out_dir) / "warm_start"
        warm = run_warm_start(
            warm_start,
            model,
            mesh_obj,
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
        if jax.process_index() == 0:
            print(
                f"warm start: {warm['steps']} supervised steps on {warm['rows']} rows; sampled completions with "
                f"one heading {warm['after']['format_rate']:.2f}, stopped {warm['after']['stopped']:.2f}"
            )
        del loaded
        loaded = load(model, mesh_obj, warm_dir)
        extra_fp["warm_start"] = {
            "config": json.loads(json.dumps(dataclasses.asdict(warm_start), default=str)),
            "weights": weights_identity(loaded.params),
        }
    if "similarity" in rewards.weights and rewards.variant("similarity") == "similarity_local":
        from synpro_jax.rl.rewards.similarity import LMEmbedder

        extra_fp["similarity"] = {"max_len": similarity_max_len, "embedder": "the starting generator"}

        runtime["embedder"] = LMEmbedder(
            model,
            loaded.params,
            encoder_for(vocab),
            mesh=mesh_obj,
            max_len=similarity_max_len,
            batch_size=similarity_batch_size,
        )
    suite = build_suite(rewards, **runtime)
    fingerprint = {
        "generator": start_identity,
        "vocabulary": vocabulary_fingerprint(vocab_spec, vocab),
        "rewards": json.loads(json.dumps(dataclasses.asdict(rewards), default=str)),
        "prompt_files": files_fingerprint(_as_tuple(prompts)),
        **extra_fp,
    }
    files = [vocab_spec] if isinstance(vocab_spec, (str, os.PathLike)) else []  # a Passthrough vocab has no file
    trainer = GRPOTrainer(
        model,
        mesh_obj,
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
            f"mesh {sharding.devices_summary(mesh_obj)} | {run.prompts_per_step} prompts x G="
            f"{algorithm.num_generations} per step | {len(prompt_set)} prompt documents | rewards "
            f"{dict(rewards.weights)} | {run.num_steps} steps -> {run.out_dir}"
        )
    # config.gin describes the checkpoints: written only once the trainer has accepted them
    return trainer.run(on_start=lambda: _write_config(run.out_dir))


@gin.configurable(module="synpro")
def loop(config=gin.REQUIRED, model: ModelConfig = gin.REQUIRED, data=gin.REQUIRED, progress: bool = True) -> dict:
    """A SynPro experiment and its baselines (loop/runner.py), resumable through ``config.out_dir/loop.json``.
    ``config`` is a LoopConfig; ``model`` the pretraining LM (also theta for the probe and the influence reward);
    ``data`` the round-0 DataConfig the later rounds extend. Every stage's other settings come from its usual
    gin bindings (gin/runs/loop.gin includes them)."""
    from synpro_jax.loop.runner import run_loop

    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    _write_config(config.out_dir)
    return run_loop(config, model, data, progress=progress)


@gin.configurable(module="synpro")
def demo(config=gin.REQUIRED, model: ModelConfig = gin.REQUIRED, progress: bool = True) -> dict:
    """``synpro demo``: the built-in world's files, the generators' teaching, then the SynPro experiment
    (``synpro.loop``) and its result table (demo/runner.py). ``config`` is a DemoConfig; ``model`` the LM and the
    taught generators."""
    from synpro_jax.demo.runner import run_demo

    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    return run_demo(config, model, progress=progress)


def _write_config(out_dir: str | Path) -> None:
    """The run's full gin configuration as ``out_dir/config.gin`` (atomically)."""
    import jax

    if jax.process_index() != 0:  # one writer for a shared file
        return
    from synpro_jax import atomic

    atomic.write_text(Path(out_dir) / "config.gin", gin.config_str())


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


# --- parsing: search paths and checks made before any work -------------------------------------------------------
class GinConfigError(ValueError):
    """A gin file or binding that cannot work; the message is one line and names the binding."""


def gin_search_root() -> Path:
    """The folder that holds ``gin/``: the installed package (a wheel ships the files as ``synpro_jax/gin``) or
    the source checkout (an editable install reads the checkout's ``gin/``)."""
    here = Path(__file__).resolve().parent
    return here if (here / "gin").is_dir() else here.parent


def search_paths(extra: Sequence[str] = ()) -> list[str]:
    """Where gin files and their includes are looked for after the working directory: ``extra`` (t5x's
    ``--gin_search_paths``) in order, then the files that ship with synpro_jax."""
    return [str(Path(p).expanduser()) for p in extra if p] + [str(gin_search_root())]


def find_gin_file(name: str, paths: Sequence[str]) -> Path:
    """The file gin will read for ``name`` (the working directory first, then ``paths``, as gin searches)."""
    candidates = [name] if os.path.isabs(name) else [name, *(os.path.join(p, name) for p in paths)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return Path(candidate)
    raise GinConfigError(
        f"gin file {name!r} not found in the working directory {os.getcwd()} or the search paths "
        f"{list(paths)} (add its folder with --gin_search_paths)"
    )


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


class _Ref:
    """A ``@configurable`` or ``%macro`` while scanning (printed as written)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _ScanDelegate(config_parser.ParserDelegate):
    def __init__(self):
        self.macros_used: set[str] = set()

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Ref("@" + scoped_configurable_name + ("()" if evaluate else ""))

    def macro(self, macro_name):
        self.macros_used.add(macro_name)
        return _Ref("%" + macro_name)


@dataclasses.dataclass(frozen=True)
class _Binding:
    name: str  # a macro's (scoped) name, or scope/selector
    param: str  # "" for a macro
    value: Any
    where: str  # file:line, or the command-line flag

    @property
    def selector(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def _scan(gin_files: Sequence[str], bindings: Sequence[str], paths: Sequence[str]):
    """Read the files (following includes as gin does) and bindings with gin's own parser, without binding
    anything: (file bindings, command-line bindings, macros referenced anywhere)."""
    delegate = _ScanDelegate()

    def statements(text_or_file, where_of):
        out = []
        for st in config_parser.ConfigParser(text_or_file, delegate):
            if isinstance(st, config_parser.BindingStatement):
                name = f"{st.scope}/{st.selector}" if st.scope else st.selector
                out.append(_Binding(name, st.arg_name, st.value, where_of(st.location)))
            elif isinstance(st, config_parser.IncludeStatement):
                out.append(st)
        return out

    file_bindings: list[_Binding] = []

    def read(name: str, stack: tuple[str, ...]) -> None:
        path = find_gin_file(name, paths)
        if str(path.resolve()) in stack:
            raise GinConfigError(f"gin file {path} includes itself (through {' -> '.join(stack)})")
        with open(path, encoding="utf-8") as f:
            found = statements(f, lambda loc: f"{path}:{loc.line_num}")
        for st in found:
            if isinstance(st, config_parser.IncludeStatement):
                read(st.filename, stack + (str(path.resolve()),))
            else:
                file_bindings.append(st)

    for name in gin_files:
        read(name, ())
    cli = []
    for text in bindings:
        cli += [b for b in statements(text, lambda loc, t=text: f"--gin.{t}") if isinstance(b, _Binding)]
    return file_bindings, cli, delegate.macros_used


def _parameters(classes: Sequence[type]) -> dict[str, list[str]]:
    """Full selector -> the parameter names it accepts, for every synpro configurable."""
    table = {f"synpro.{cls.__name__}": [f.name for f in dataclasses.fields(cls) if f.init] for cls in classes}
    for fn in (pretrain, probe, finetuned_dir, influence_server, synthesize, grpo, loop, demo):
        params = inspect.signature(fn).parameters.values()
        table[f"synpro.{fn.__name__}"] = [p.name for p in params if p.kind != p.VAR_KEYWORD]
    table["synpro.preset"] = list(dict.fromkeys(["name", *_model_fields()]))
    return table


def _check(file_bindings: list[_Binding], cli: list[_Binding], macros_used: set[str], classes) -> None:
    """Mistakes gin would accept silently or report only when the run calls the configurable."""
    table = _parameters(classes)
    file_macros = {b.name for b in file_bindings if not b.param}
    known = file_macros | {f"{b.selector}.{b.param}" for b in file_bindings if b.param}
    known |= {f"{sel}.{p}" for sel, params in table.items() for p in params}
    for b in cli:  # a command-line macro that nothing defines or reads is a typo of a real one
        if not b.param and b.name not in file_macros and b.name not in macros_used:
            raise GinConfigError(
                f"{b.where}: no gin file defines or uses a macro {b.name}{_did_you_mean(b.name, known)}"
            )
    for b in file_bindings + cli:
        if not b.param:
            continue
        matches = [sel for sel in table if sel == b.selector or sel.endswith("." + b.selector)]
        if not matches and b.selector.startswith("synpro."):
            raise GinConfigError(
                f"{b.where}: there is no configurable {b.selector}"
                f"{_did_you_mean(b.selector, table) or '; known: ' + ', '.join(sorted(table))}"
            )
        if len(matches) == 1 and b.param not in table[matches[0]]:
            params = table[matches[0]]
            raise GinConfigError(
                f"{b.where}: {matches[0]} has no parameter {b.param!r}"
                f"{_did_you_mean(b.param, params) or '; its parameters: ' + ', '.join(params)}"
            )
    final = {}
    for b in file_bindings + cli:  # later bindings override earlier ones, as in gin
        final[(b.name, b.param)] = b.value
    missing = [name for (name, param), value in final.items() if not param and repr(value) == "%gin.REQUIRED"]
    if missing:
        raise GinConfigError(
            f"gin macros {missing} are REQUIRED: set them in an experiment file or with --gin.{missing[0]}=VALUE"
        )
    unset = [f"{name}.{param}" for (name, param), value in final.items() if param and repr(value) == "%gin.REQUIRED"]
    if unset:
        raise GinConfigError(
            f"gin bindings {unset} are REQUIRED: set them in an experiment file or with --gin.{unset[0]}=VALUE"
        )


class _QuietGinSearch(logging.Filter):
    """gin's package-resource reader logs every search-path miss as an ERROR, even when a later path has the
    file; a file that is truly missing raises instead, so these records say nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
            and record.getMessage().startswith("Path not found")
        )


_SEARCH_PATHS_ADDED: set[str] = set()


def parse(gin_files: Sequence[str], bindings: Sequence[str], gin_search_paths: Sequence[str] = ()) -> None:
    """Parse gin files and KEY=VALUE bindings, after checking them: an unknown parameter or a command-line macro
    that no file defines or reads (``--gin.LEARNING_RAT=1e-3``) fails naming the closest known name, and so do
    REQUIRED macros left unset. Files are searched in the working directory, ``gin_search_paths``, then the
    package's own gin files. Replaces any configuration parsed before."""
    classes = _lazy_configurables()
    paths = search_paths(gin_search_paths)
    file_bindings, cli, used = _scan(gin_files, bindings, paths)
    _check(file_bindings, cli, used, classes)
    if not any(isinstance(f, _QuietGinSearch) for f in logging.getLogger().filters):
        logging.getLogger().addFilter(_QuietGinSearch())
    for path in paths:
        if path not in _SEARCH_PATHS_ADDED:
            gin.add_config_file_search_path(path)
            _SEARCH_PATHS_ADDED.add(path)
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [str(find_gin_file(f, paths)) for f in gin_files], list(bindings), finalize_config=False
    )
