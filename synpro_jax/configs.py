"""gin registration and the gin-configured entry points (``synpro.*`` in gin files).

Three layers, as in t5x: ``gin/models/*.gin`` pick a model, ``gin/runs/*.gin`` set a run's knobs with
``%gin.REQUIRED`` macros for what each experiment must decide, and ``gin/experiments/*.gin`` include one of each
and fill the macros. Every configurable is a validated dataclass or a function, so a wrong value fails with a
message naming the knob, and an unknown knob fails when the files are parsed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

import gin

from synpro_jax.models.config import ModelConfig
from synpro_jax.models.presets import get_preset
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig

log = logging.getLogger(__name__)

GIN_DIR = Path(__file__).resolve().parents[1] / "gin"

gin.external_configurable(MeshConfig, name="MeshConfig", module="synpro")
gin.external_configurable(OptimizerConfig, name="OptimizerConfig", module="synpro")
gin.external_configurable(ModelConfig, name="ModelConfig", module="synpro")


@gin.configurable(module="synpro")
def preset(name: str = gin.REQUIRED, **overrides) -> ModelConfig:
    """A named model preset with field overrides (``synpro.preset.dtype = "bfloat16"``)."""
    return get_preset(name, **overrides)


def _register(*classes) -> None:
    for cls in classes:
        try:
            gin.external_configurable(cls, name=cls.__name__, module="synpro")
        except ValueError:  # already registered in this process
            pass


def _lazy_configurables():
    """Config classes whose modules import TensorFlow/seqio or the sampler: registered only when gin is parsed."""
    from synpro_jax.data.config import DataConfig, SyntheticShards
    from synpro_jax.data.vocab import PassthroughVocabulary, TrainedSentencePiece
    from synpro_jax.generation.synthesize import SynthesisConfig
    from synpro_jax.influence.probe import ProbeConfig
    from synpro_jax.train.trainer import TrainerConfig

    _register(DataConfig, SyntheticShards, PassthroughVocabulary, TrainedSentencePiece, TrainerConfig, ProbeConfig,
              SynthesisConfig)


def _as_tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


@gin.configurable(module="synpro")
def pretrain(model: ModelConfig = gin.REQUIRED, mesh: MeshConfig = MeshConfig(),
             optimizer: OptimizerConfig = gin.REQUIRED, trainer=gin.REQUIRED, data=gin.REQUIRED,
             init_from_hf: str | None = None) -> dict:
    """Build the data streams and the trainer, then train (resuming from ``trainer.out_dir`` if it holds a
    checkpoint). Returns the trainer's summary."""
    import jax

    from synpro_jax import sharding
    from synpro_jax.data.streams import build_streams, summarize
    from synpro_jax.models import hf
    from synpro_jax.train.trainer import Trainer

    init_params = None
    if init_from_hf:
        hf_cfg, init_params = hf.load(init_from_hf)
        if (hf_cfg.d_model, hf_cfg.num_layers, hf_cfg.vocab_size) != (model.d_model, model.num_layers,
                                                                       model.vocab_size):
            raise ValueError(f"synpro.pretrain.init_from_hf={init_from_hf}: {hf_cfg.describe()} does not match "
                             f"the configured model {model.describe()}")
    streams = build_streams(data, trainer.seq_len, progress=trainer.progress)
    if streams.info["vocab_size"] > model.vocab_size:
        raise ValueError(f"the vocabulary has {streams.info['vocab_size']} tokens but the model's vocab_size is "
                         f"{model.vocab_size}; set synpro.preset.vocab_size")
    mesh_obj = sharding.make_mesh(mesh)
    if jax.process_index() == 0:
        print(model.describe())
        print(f"mesh {sharding.devices_summary(mesh_obj)} | global batch {trainer.global_batch} x seq "
              f"{trainer.seq_len} | {trainer.num_steps} steps -> {trainer.out_dir}")
        print(summarize(streams.info))
        out = Path(trainer.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.gin").write_text(gin.config_str())
    runner = Trainer(model, mesh_obj, optimizer, trainer, streams.train, streams.validation, init_params,
                     data_fingerprint=streams.info["fingerprint"],
                     summary_extra={"organic_unigram_entropy": streams.info["organic_unigram_entropy"]})
    return runner.run()


@gin.configurable(module="synpro")
def probe(model: ModelConfig = gin.REQUIRED, mesh: MeshConfig = MeshConfig(), checkpoint: str = gin.REQUIRED,
          vocabulary: str = gin.REQUIRED, reference=gin.REQUIRED, corpus=gin.REQUIRED, out_dir: str = gin.REQUIRED,
          settings=None, text_field: str = "text", max_len: int = 2048, batch_size: int = 32,
          max_reference_examples: int | None = None) -> dict:
    """The influence probe: fine-tune theta' on the reference task, then score every corpus document."""
    from synpro_jax import sharding
    from synpro_jax.influence.probe import ProbeConfig
    from synpro_jax.influence.run import probe_and_score

    mesh_obj = sharding.make_mesh(mesh)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "config.gin").write_text(gin.config_str())
    return probe_and_score(model, mesh_obj, checkpoint, vocabulary, _as_tuple(reference), _as_tuple(corpus),
                           out_dir, settings or ProbeConfig(), text_field=text_field, max_len=max_len,
                           batch_size=batch_size, max_reference_examples=max_reference_examples)


@gin.configurable(module="synpro")
def finetuned_dir(probe_out: str = gin.REQUIRED) -> str:
    """theta' written by `synpro probe` into its out_dir."""
    return str(Path(probe_out) / "finetuned")


@gin.configurable(module="synpro")
def influence_server(model: ModelConfig = gin.REQUIRED, mesh: MeshConfig = MeshConfig(),
                     checkpoint: str = gin.REQUIRED, finetuned: str = gin.REQUIRED, vocabulary: str = gin.REQUIRED,
                     max_len: int = 2048, batch_size: int = 32, host: str = "127.0.0.1", port: int = 24775,
                     max_texts: int = 256) -> None:
    """Serve POST /get_influence and GET /health for theta (checkpoint) and theta' (the probe's finetuned dir)."""
    from synpro_jax import sharding
    from synpro_jax.data.corpus import encoder_for
    from synpro_jax.data.vocab import load_vocabulary
    from synpro_jax.influence.probe import Probe
    from synpro_jax.train.params_io import load_params
    from synpro_jax.influence.service import InfluenceServer
    from synpro_jax.models import hf

    mesh_obj = sharding.make_mesh(mesh)
    vocab = load_vocabulary(vocabulary)
    params = load_params(model, mesh_obj, checkpoint)
    _, tuned = hf.load(finetuned)
    probe_obj = Probe(model, mesh_obj, params, tuned, max_len=max_len)
    server = InfluenceServer(probe_obj, encoder_for(vocab), host=host, port=port, batch_size=batch_size,
                             max_texts=max_texts, pad_id=vocab.pad_id)
    print(f"serving influence on http://{server.address[0]}:{server.address[1]} (POST /get_influence, "
          "GET /health)", flush=True)
    server.serve_forever()


@gin.configurable(module="synpro")
def synthesize(generator: str = gin.REQUIRED, shards=gin.REQUIRED, out_dir: str = gin.REQUIRED,
               settings=gin.REQUIRED, model: ModelConfig | None = None, mesh: MeshConfig = MeshConfig(),
               vocabulary: str | None = None, stop_tokens: Sequence[str] = (), dtype: str | None = None,
               progress: bool = True) -> dict:
    """Run a generator over organic shards into out_dir (resumable; see generation/synthesize.py).

    ``generator`` is an HF Olmo2 directory (its config.json gives the model unless ``model`` is set; its
    tokenizer.json is the default vocabulary) or a synpro run/checkpoint directory (then ``model`` and
    ``vocabulary`` are required). ``stop_tokens`` end a completion besides the vocabulary's EOS; ``dtype``
    ("bfloat16") overrides the compute dtype.
    """
    from synpro_jax import sharding
    from synpro_jax.data.vocab import load_vocabulary
    from synpro_jax.generation.synthesize import Synthesizer
    from synpro_jax.train.params_io import load_params_and_step

    path = Path(generator)
    is_hf = (path / "config.json").exists()
    if model is None:
        if not is_hf:
            raise ValueError(f"synpro.synthesize.generator={generator}: not an HF directory, so set "
                             "synpro.synthesize.model")
        from synpro_jax.models import hf

        model = hf.read_config(path)
    if dtype is not None:
        model = model.replace(dtype=dtype)
    if vocabulary is None:
        if not (path / "tokenizer.json").exists():
            raise ValueError(f"synpro.synthesize.vocabulary: {generator} has no tokenizer.json; name the "
                             "generator's vocabulary")
        vocabulary = str(path / "tokenizer.json")
    vocab = load_vocabulary(vocabulary)
    stop_ids = []
    for token in stop_tokens:
        ids = list(vocab.encode(token))
        if len(ids) != 1:
            raise ValueError(f"synpro.synthesize.stop_tokens: {token!r} is {len(ids)} tokens, not one")
        stop_ids.extend(ids)
    mesh_obj = sharding.make_mesh(mesh)
    params, step = load_params_and_step(model, mesh_obj, generator)
    synth = Synthesizer(model, params, vocab, settings, mesh=mesh_obj, generator=str(generator),
                        generator_step=step, stop_ids=stop_ids)
    del params  # the sampler holds its own cast, per-layer copy
    manifest = synth.run(_as_tuple(shards), out_dir, progress=progress)
    Path(out_dir, "config.gin").write_text(gin.config_str())
    return manifest


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parse gin files (searched in the working directory, then beside the package) and KEY=VALUE bindings."""
    _lazy_configurables()
    for path in (os.getcwd(), str(GIN_DIR.parent), str(GIN_DIR)):
        gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
    missing = sorted(name for (name, selector), params in gin.config._CONFIG.items()
                     if selector == "gin.macro" and repr(params.get("value")) == "%gin.REQUIRED")
    if missing:
        raise ValueError(f"gin macros {missing} are REQUIRED: set them in an experiment file or with "
                         f"--gin.{missing[0]}=VALUE")
