"""The probe and the influence service as stages: load theta, fine-tune theta', score a corpus or serve.

Everything written records what it was made from. ``finetuned/probe.json`` holds theta' provenance (theta's
source, step and a digest of its weights; the probe config, reference files and vocabulary), checked before
theta' is reused. The corpus scores carry a fingerprint (theta's step, the probe, ``max_len``, the vocabulary
and the corpus files) that a resumed job must match; see :func:`synpro_jax.influence.probe.score_corpus`.

What is scored, beside the release's contract. The release scores two kinds of unit, and both differ from ours:

- its corpus pass (scripts/probe_influence.py) scores fixed 2,048-token chunks of the pretraining token files
  (OLMo's MemMapDataset slices, which cross document boundaries), each by its mean loss over 2,047 predictions;
- its influence service (generator/infer/get_influence.py, the GRPO reward) tokenizes each text, appends EOS,
  cuts it to 2,048 tokens and pads a batch of 8 to its longest text with the pad id, without an attention or
  label mask: a text's mean loss runs over the padding as well (predicting pad tokens), so its score depends on
  which texts share its batch.

Here the unit is the whole document (its tokens as the corpus reader or the service's encoder yields them, no
EOS appended, cut to ``max_len + 1`` tokens: ``max_len`` predictions), scored by its mean loss over its own
tokens only: padding is masked, so a score depends on nothing but the document, theta and theta'. We keep this
on purpose (no mode reproduces the release's chunks or its padded means); scores agree with the release's in
sign and meaning, not number for number.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any

from etils.epath import Path
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from synpro_jax import atomic, distributed, sharding
from synpro_jax.data.corpus import build_corpus, encoder_for
from synpro_jax.data.sources import expand_paths, open_sources
from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.errors import ConfigError
from synpro_jax.influence.probe import Probe, ProbeConfig, _atomic_json, finetune, score_corpus
from synpro_jax.influence.reference import PackedReference, ReferenceSource, encode_examples
from synpro_jax.influence.service import InfluenceServer
from synpro_jax.models import ModelConfig, hf
from synpro_jax.resume_guard import describe, differences, jsonable
from synpro_jax.sharding import MeshConfig
from synpro_jax.train import params_io

log = logging.getLogger(__name__)

PROVENANCE = "probe.json"


def reference_examples(paths: Sequence[str], max_examples: int | None = None) -> list:
    src = ReferenceSource(list(paths))
    examples = list(src)
    print(f"reference: {src.report.summary()}")
    if not examples:
        raise ValueError(f"reference {list(paths)}: no usable examples")
    if max_examples:
        order = np.random.default_rng(0).permutation(len(examples))[:max_examples]
        examples = [examples[i] for i in sorted(order)]
    return examples


def reference_rows(paths: Sequence[str], vocab, seq_len: int, max_examples: int | None = None):
    """One reference example per padded row (for per-example reference losses)."""
    return encode_examples(reference_examples(paths, max_examples), vocab, seq_len)


# --- fingerprints ---------------------------------------------------------------------------------------------


def files_fingerprint(specs: Sequence[str]) -> list:
    """Each file a spec names, as (absolute path, size, mtime); non-file specs (``tfds:``, ``markov:``) as is."""
    out = []
    for spec in specs:
        if str(spec).startswith(("tfds:", "markov:")):
            out.append(str(spec))
            continue
        for f in expand_paths(spec):
            if atomic.is_remote(f):  # an object's generation changes with every write; size and mtime suffice
                st = f.stat()
                out.append([str(f), st.length, st.mtime])
            else:
                st = os.stat(f)
                out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def vocabulary_fingerprint(spec: str, vocab) -> dict:
    fp = {"spec": str(spec), "vocab_size": int(vocab.vocab_size), "eos_id": int(vocab.eos_id)}
    path = getattr(vocab, "sentencepiece_model_file", None) or getattr(vocab, "_path", None)
    if not path and Path(str(spec)).is_file():
        path = spec
    if path and Path(path).exists():
        fp["sha1"] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return fp


@functools.lru_cache(maxsize=8)
def _digest_fn(structure):
    return jax.jit(lambda p: jnp.stack([jnp.stack([jnp.sum(x), jnp.sum(x * x)]) for x in jax.tree.leaves(p)]))


def params_digest(params: Any) -> list:
    """Per tensor (sum, sum of squares) in float32: equal weights give equal digests up to summation order."""
    out = _digest_fn(jax.tree.structure(params))(params)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True), np.float64).tolist()


def theta_identity(theta: params_io.LoadedParams) -> dict:
    return {"source": theta.source, "kind": theta.kind, "step": theta.step, "digest": params_digest(theta.params)}


def check_theta_prime(provenance: dict, theta: dict, probe: dict | None, where: str) -> None:
    """Refuse a theta' made from another theta (source, step or weights) or under another probe config."""
    old = provenance.get("theta", {})
    for field in ("source", "kind", "step"):
        if old.get(field) != theta[field]:
            raise ValueError(
                f"{where} was fine-tuned from another theta: {field} {old.get(field)!r} then, "
                f"{theta[field]!r} now. Delete it (or use a new probe out_dir) to fine-tune again"
            )
    a, b = np.asarray(old.get("digest", []), np.float64), np.asarray(theta["digest"], np.float64)
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-6):
        raise ValueError(
            f"{where} was fine-tuned from other weights than {theta['source']} step {theta['step']} "
            "holds now. Delete it (or use a new probe out_dir) to fine-tune again"
        )
    diffs = [] if probe is None else differences(jsonable(provenance.get("probe", {})), jsonable(probe))
    if diffs:
        raise ConfigError(
            f"{where} was fine-tuned with other probe settings ({describe(diffs)}). "
            "Delete it (or use a new probe out_dir) to fine-tune again"
        )


def load_finetuned(cfg: ModelConfig, path: str | Path, theta: params_io.LoadedParams, probe: dict | None = None) -> Any:
    """theta' from ``path`` (an HF directory written by the probe) after checking it comes from ``theta`` (and,
    if given, the ``probe`` fingerprint). Raises naming what differs."""
    path = Path(path)
    prov_path = path / PROVENANCE
    if not prov_path.exists():
        raise ValueError(
            f"{path} has no {PROVENANCE}, so nothing shows which theta and probe config it came "
            "from. Delete it to fine-tune again"
        )
    check_theta_prime(json.loads(prov_path.read_text()), theta_identity(theta), probe, str(path))
    tuned_cfg, tuned = hf.load(path)
    if (
        tuned_cfg.d_model != cfg.d_model
        or tuned_cfg.num_layers != cfg.num_layers
        or tuned_cfg.vocab_size != cfg.vocab_size
    ):
        raise ValueError(f"{path}: {tuned_cfg.describe()} does not match the configured model {cfg.describe()}")
    return tuned


def load_pair(cfg: ModelConfig, mesh: Mesh, checkpoint: str, finetuned: str) -> tuple[Any, Any]:
    """(theta, theta') for the influence service: theta' is checked to come from this theta."""
    theta = params_io.load(cfg, mesh, checkpoint)
    return theta.params, load_finetuned(cfg, finetuned, theta)


def _save_finetuned(cfg: ModelConfig, tuned: Any, path: Path, provenance: dict) -> None:
    """HF directory plus provenance, renamed into place in one step (process 0 only)."""
    host = jax.tree.map(sharding.to_host, tuned)  # every process takes part in the gather
    if jax.process_index() != 0:
        return

    def fill(tmp):
        hf.write_dir(cfg, host, tmp)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2))

    atomic.publish_dir(path, fill, last=(PROVENANCE, "config.json"))


# --- the stage ------------------------------------------------------------------------------------------------


def probe_and_score(
    cfg: ModelConfig,
    mesh: Mesh,
    checkpoint: str,
    vocabulary: str,
    reference: Sequence[str],
    corpus: Sequence[str],
    out_dir: str,
    probe_cfg,
    *,
    text_field: str = "text",
    max_len: int = 2048,
    batch_size: int = 32,
    max_reference_examples: int | None = None,
    chunk_docs: int = 512,
    progress: bool = True,
) -> dict:
    """Fine-tune theta' (saved as an HF directory in out_dir/finetuned, reused if it comes from this theta and
    probe config) and score every document of ``corpus`` into out_dir/scores/influence.npz."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = load_vocabulary(vocabulary)
    theta = params_io.load(cfg, mesh, checkpoint, with_adam=True)
    print(
        f"theta: {theta.source} ({theta.kind}, step {theta.step}, "
        f"{'Adam moments restored' if theta.adam is not None else 'no optimizer state: fresh Adam moments'})"
    )
    probe_fp = {
        "config": dataclasses.asdict(probe_cfg),
        "reference": files_fingerprint(reference),
        "max_reference_examples": max_reference_examples,
        "vocabulary": vocabulary_fingerprint(vocabulary, vocab),
    }
    identity = theta_identity(theta)
    tuned_dir = out / "finetuned"
    if (tuned_dir / "config.json").exists():
        tuned = load_finetuned(cfg, tuned_dir, theta, probe_fp)
        print(f"reusing theta' from {tuned_dir}")
    elif tuned_dir.is_dir() and any(tuned_dir.iterdir()):  # caught before the fine-tune, not at its final rename
        raise ValueError(f"{tuned_dir} exists but holds no theta' (no config.json); remove it to fine-tune again")
    else:
        examples = reference_examples(reference, max_reference_examples)
        packed = PackedReference(examples, vocab, probe_cfg.seq_len, seed=probe_cfg.seed, packing=probe_cfg.packing)
        print(
            f"reference: {packed.num_examples} examples, {packed.answer_tokens} answer tokens per epoch, packed "
            f"into rows of {packed.row_len} tokens ({probe_cfg.packing}); loss over "
            f"{probe_cfg.loss_normalization}"
        )
        losses = []
        tuned = finetune(
            cfg,
            mesh,
            theta.params,
            packed,
            probe_cfg,
            adam=theta.adam,
            step=theta.step,
            progress=progress,
            on_step=lambda s, p, m: losses.append(float(m["loss"])),
        )
        _save_finetuned(
            cfg,
            tuned,
            tuned_dir,
            {
                "theta": identity,
                "probe": probe_fp,
                "reference_loss": {"first_step": losses[0], "last_step": losses[-1]},
            },
        )
        distributed.barrier(f"probe theta' {tuned_dir}")  # the influence server and reruns read it on every host
    docs_corpus, report = build_corpus(
        open_sources(list(corpus), text_field=text_field, eos_id=vocab.eos_id, vocab_size=vocab.vocab_size),
        vocab,
        cache_dir=out / "cache",
        name="probe_corpus",
        progress=progress,
    )
    if report is not None:
        print(f"corpus: {report.summary()}")
    theta_params, theta_step, adam_restored = theta.params, theta.step, theta.adam is not None
    fingerprint = {
        "theta_source": theta.source,
        "theta_step": theta_step,
        "probe": probe_fp,
        "vocabulary": probe_fp["vocabulary"],
        "corpus": files_fingerprint(corpus),
        "text_field": text_field,
    }
    del theta  # its Adam moments are not needed to score
    mesh, theta_params, tuned = params_io.per_host(cfg, mesh, theta_params, tuned)  # see score_corpus
    probe = Probe(cfg, mesh, theta_params, tuned, max_len=max_len)
    del theta_params, tuned  # the probe holds its own placed copies
    docs = [docs_corpus.doc(i) for i in range(docs_corpus.num_docs)]
    path = score_corpus(
        probe,
        docs,
        docs_corpus.doc_ids,
        out / "scores",
        fingerprint=fingerprint,
        batch_size=batch_size,
        chunk_docs=chunk_docs,
        progress=progress,
    )
    with atomic.load_npz(path) as z:
        infl = z["influence"]
        summary = {
            "scores": str(path),
            "documents": int(len(infl)),
            "theta_step": theta_step,
            "adam_restored": adam_restored,
            "influence_mean": float(infl.mean()),
            "influence_std": float(infl.std()),
            "loss_before_mean": float(z["loss_before"].mean()),
            "loss_after_mean": float(z["loss_after"].mean()),
        }
    if jax.process_index() == 0:
        _atomic_json(out / "summary.json", summary)
    distributed.barrier(f"probe summary {out}")
    return summary


# --- the jobs: ``synpro probe`` and ``synpro influence-server`` ---------------------------------------------------


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


@dataclasses.dataclass(frozen=True)
class ProbeJob:
    """What ``synpro probe`` runs (gin: ``synpro.probe``): fine-tune theta' on the reference task, then score every
    corpus document (saved in parts of ``chunk_docs`` documents: what a killed job keeps). The loop keeps a job
    with ``checkpoint`` and ``out_dir`` None as its template and sets them per round."""

    model: ModelConfig
    checkpoint: str | None
    vocabulary: str | None
    reference: Any
    corpus: Any
    out_dir: str | None
    mesh: MeshConfig = MeshConfig()
    settings: ProbeConfig | None = None
    text_field: str = "text"
    max_len: int = 2048
    batch_size: int = 32
    max_reference_examples: int | None = None
    chunk_docs: int = 512


def probe(job: ProbeJob, record: str | None = None) -> dict:
    """Run the probe; ``record``, the configuration text, is written as ``out_dir/config.gin`` first."""
    for knob in ("checkpoint", "vocabulary", "reference", "corpus", "out_dir"):
        if getattr(job, knob) is None:
            raise ConfigError(f"synpro.probe.{knob}: not set")
    mesh = sharding.make_mesh(job.mesh)
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    distributed.write_config_record(job.out_dir, record)
    return probe_and_score(
        job.model,
        mesh,
        job.checkpoint,
        job.vocabulary,
        _as_tuple(job.reference),
        _as_tuple(job.corpus),
        job.out_dir,
        job.settings or ProbeConfig(),
        text_field=job.text_field,
        max_len=job.max_len,
        batch_size=job.batch_size,
        max_reference_examples=job.max_reference_examples,
        chunk_docs=job.chunk_docs,
    )


def finetuned_dir(probe_out: str) -> str:
    """theta' written by `synpro probe` into its out_dir (gin: ``@synpro.finetuned_dir()``)."""
    return str(Path(probe_out) / "finetuned")


@dataclasses.dataclass(frozen=True)
class InfluenceServerJob:
    """What ``synpro influence-server`` runs (gin: ``synpro.influence_server``): POST /get_influence and GET /health
    for theta (``checkpoint``) and theta' (the probe's finetuned dir). ``max_queued`` requests wait for the device
    (more get 503 with Retry-After); ``timeout_s`` bounds a request's wait, ``socket_timeout_s`` each socket read
    and write."""

    model: ModelConfig
    checkpoint: str
    finetuned: str
    vocabulary: str
    mesh: MeshConfig = MeshConfig()
    max_len: int = 2048
    batch_size: int = 32
    host: str = "127.0.0.1"
    port: int = 24775
    max_texts: int = 256
    max_queued: int = 64
    timeout_s: float = 600.0
    socket_timeout_s: float = 30.0
    retry_after_s: int = 5


def serve(job: InfluenceServerJob) -> None:
    """Load theta and theta' (checked to come from this theta) and serve until stopped."""
    mesh = sharding.make_mesh(job.mesh)
    vocab = load_vocabulary(job.vocabulary)
    params, tuned = load_pair(job.model, mesh, job.checkpoint, job.finetuned)
    probe_obj = Probe(job.model, mesh, params, tuned, max_len=job.max_len)
    server = InfluenceServer(
        probe_obj,
        encoder_for(vocab),
        host=job.host,
        port=job.port,
        batch_size=job.batch_size,
        max_texts=job.max_texts,
        pad_id=vocab.pad_id,
        max_queued=job.max_queued,
        timeout_s=job.timeout_s,
        socket_timeout_s=job.socket_timeout_s,
        retry_after_s=job.retry_after_s,
    )
    print(
        f"serving influence on http://{server.address[0]}:{server.address[1]} (POST /get_influence, GET /health)",
        flush=True,
    )
    server.serve_forever()
