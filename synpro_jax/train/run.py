"""``synpro train``'s job body: build the data streams and the trainer, then train (resumable).

A plain function of typed configs (:class:`PretrainJob`), called by the CLI once gin has built the job
(``synpro.pretrain`` in gin files) and by the loop for each pretraining stage.
"""

from __future__ import annotations

import dataclasses

import jax

from synpro_jax import distributed, sharding
from synpro_jax.data.config import DataConfig
from synpro_jax.data.streams import build_streams, summarize
from synpro_jax.data.tasks import organic_task_name
from synpro_jax.errors import ConfigError
from synpro_jax.models import hf
from synpro_jax.models.config import ModelConfig
from synpro_jax.sharding import MeshConfig
from synpro_jax.train import params_io
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.trainer import Trainer, TrainerConfig

__all__ = ["PretrainJob", "pretrain"]


@dataclasses.dataclass(frozen=True)
class PretrainJob:
    """What ``synpro train`` runs (gin: ``synpro.pretrain``).

    ``init_from_hf`` starts from an HF directory's weights. ``init_from`` continues another synpro run (its
    latest checkpoint: weights, AdamW moments and step, so the schedule goes on), e.g. a SynPro round going on
    from the plateau checkpoint on a new mixture; an HF directory there gives the weights only. The loop keeps a
    job with ``trainer`` and ``data`` None as its template and sets them per stage.
    """

    model: ModelConfig
    optimizer: OptimizerConfig
    trainer: TrainerConfig | None
    data: DataConfig | None
    mesh: MeshConfig = MeshConfig()
    init_from_hf: str | None = None
    init_from: str | None = None


def pretrain(job: PretrainJob, record: str | None = None) -> dict:
    """Train (resuming from ``job.trainer.out_dir`` if it holds a checkpoint); returns the trainer's summary.
    ``record``, the configuration text, becomes ``out_dir/config.gin`` once the trainer accepted the directory."""
    model, trainer, data = job.model, job.trainer, job.data
    if trainer is None or data is None:
        raise ConfigError("synpro.pretrain: set synpro.pretrain.trainer and synpro.pretrain.data")
    if job.init_from_hf and job.init_from:
        raise ConfigError("synpro.pretrain: set init_from_hf or init_from, not both")
    init_params, init_adam, init_step, init_source = None, None, 0, ""
    mesh = sharding.make_mesh(job.mesh)
    if job.init_from:
        loaded = params_io.load(model, mesh, job.init_from, with_adam=True)
        init_params, init_adam, init_step = loaded.params, loaded.adam, loaded.step
        init_source = f"{loaded.source}@{loaded.step}"
    if job.init_from_hf:
        hf_cfg, init_params = hf.load(job.init_from_hf)
        if (hf_cfg.architecture, hf_cfg.tie_embeddings, hf_cfg.d_model, hf_cfg.num_layers, hf_cfg.vocab_size) != (
            model.architecture,
            model.tie_embeddings,
            model.d_model,
            model.num_layers,
            model.vocab_size,
        ):
            raise ConfigError(
                f"synpro.pretrain.init_from_hf={job.init_from_hf}: {hf_cfg.describe()} does not match "
                f"the configured model {model.describe()}"
            )
    streams = build_streams(data, trainer.seq_len, progress=trainer.progress)
    if streams.info["vocab_size"] > model.vocab_size:
        raise ConfigError(
            f"the vocabulary has {streams.info['vocab_size']} tokens but the model's vocab_size is "
            f"{model.vocab_size}; set synpro.preset.vocab_size"
        )
    if jax.process_index() == 0:
        print(model.describe())
        print(
            f"mesh {sharding.devices_summary(mesh)} | global batch {trainer.global_batch} x seq "
            f"{trainer.seq_len} | {trainer.num_steps} steps -> {trainer.out_dir}"
        )
        print(summarize(streams.info))
    runner = Trainer(
        model,
        mesh,
        job.optimizer,
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
    return runner.run(on_start=lambda: distributed.write_config_record(trainer.out_dir, record))
