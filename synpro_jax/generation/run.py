"""``synpro synthesize``'s job body: run a generator over organic shards into an output directory (resumable; see
generation/synthesize.py). Called by the CLI once gin has built the job (``synpro.synthesize``) and by the loop
for each synthesis stage."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
from typing import Any

from etils.epath import Path

from synpro_jax import distributed, sharding
from synpro_jax.errors import ConfigError
from synpro_jax.generation.synthesize import SynthesisConfig, Synthesizer
from synpro_jax.models.config import ModelConfig
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.model_source import Knobs, open_source, stop_token_ids
from synpro_jax.train.params_io import load_params_and_step, per_host

__all__ = ["SynthesizeJob", "synthesize"]

KNOBS = Knobs("synpro.synthesize.generator", "synpro.synthesize.model", "synpro.synthesize.vocabulary")


@dataclasses.dataclass(frozen=True)
class SynthesizeJob:
    """What ``synpro synthesize`` runs (gin: ``synpro.synthesize``).

    ``generator`` is an HF Olmo2 directory or a synpro run/checkpoint directory (then ``model`` is required); see
    train/model_source.py for which model and vocabulary it is opened with. ``stop_tokens`` end a completion
    besides the vocabulary's EOS; ``dtype`` ("bfloat16") overrides the compute dtype. ``documents`` limits
    synthesis to these source ids: a text file of one id per line, or the ids themselves (the loop passes its
    training split, never the validation documents). The loop keeps a job with ``generator``, ``shards`` and
    ``out_dir`` None as each generator's template.
    """

    generator: str | None
    shards: Any
    out_dir: str | None
    settings: SynthesisConfig | None
    model: ModelConfig | None = None
    mesh: MeshConfig = MeshConfig()
    vocabulary: str | None = None
    stop_tokens: Sequence[str] = ()
    dtype: str | None = None
    progress: bool = True
    documents: str | Sequence[str] | None = None


def _documents(spec) -> list[str] | None:
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    try:
        return [line for line in Path(spec).read_text(encoding="utf-8").splitlines() if line]
    except OSError as e:
        raise ConfigError(f"synpro.synthesize.documents={spec}: {e}") from None


def synthesize(job: SynthesizeJob, record: str | None = None) -> dict:
    """Synthesize (resuming the shards already begun); returns the manifest. ``record``, the configuration text,
    is written as ``out_dir/config.gin`` when done."""
    for knob in ("generator", "shards", "out_dir", "settings"):
        if getattr(job, knob) is None:
            raise ConfigError(f"synpro.synthesize.{knob}: not set")
    documents = _documents(job.documents)
    source = open_source(job.generator, job.model, vocabulary=job.vocabulary, dtype=job.dtype, knobs=KNOBS)
    model = source.config
    mesh = sharding.make_mesh(job.mesh)
    params, step = load_params_and_step(model, mesh, job.generator)
    mesh, params = per_host(model, mesh, params)  # each host samples its own documents (Synthesizer.run)
    synth = Synthesizer(
        model,
        params,
        source.vocab,
        job.settings,
        mesh=mesh,
        generator=str(job.generator),
        generator_step=step,
        stop_ids=stop_token_ids(source.vocab, job.stop_tokens, "synpro.synthesize.stop_tokens"),
        documents=documents,
    )
    del params  # the sampler holds its own cast, per-layer copy
    shards = tuple(job.shards) if isinstance(job.shards, (list, tuple)) else (job.shards,)
    manifest = synth.run(shards, job.out_dir, progress=job.progress)
    distributed.write_config_record(job.out_dir, record)
    return manifest
