"""The influence probe, as the SynPro release runs it.

1. Copy the pretraining checkpoint theta and fine-tune the copy on the reference task into theta': AdamW
   (0.9, 0.95, eps 1e-8) at a constant lr 1e-4 from the first step, weight decay 0.1 on everything but the
   embeddings (norms decayed), z-loss 1e-5, clip 1.0, 100 steps of 64 packed rows (answer tokens only). Adam
   continues from the checkpoint's moments and count, as the release restores the optimizer state and keeps the
   global step; only a source without them (an HF directory) starts from zero moments. Because the moments are
   restored, the scale of the gradient matters, and two details follow OLMo's trainer (olmo/train.py), which the
   release fine-tunes with: the summed answer-token loss is divided by every token of the batch, prompt tokens
   included (``ProbeConfig.loss_normalization="batch_tokens"``; ``"answer_tokens"`` divides by the answer
   tokens), and the rows are plain slices of the concatenated examples, which attend to each other with
   positions running on (``ProbeConfig.packing="release"``; ``"separate"`` keeps them apart).
2. influence(x) = L_theta(x) - L_theta'(x), the mean token loss of document x cut to ``max_len`` tokens
   (:func:`synpro_jax.influence.influence_scores`). Positive means x helps the reference task.

:func:`score_corpus` scores a whole corpus in fixed-shape batches sharded over the mesh. Scores are keyed by
document id and written chunk by chunk, atomically, so a killed job resumes where it stopped; a resumed job
checks a fingerprint of what the scores depend on and refuses, naming the field, when anything changed.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import dataclasses
import hashlib
import json
import logging
from typing import Any

from etils.epath import Path
import jax
from jax.sharding import Mesh
import numpy as np
from tqdm.auto import tqdm

from synpro_jax import atomic, distributed, heartbeat, models, sharding
from synpro_jax.checks import positive_ints
from synpro_jax.influence.kernel import compiled_loss_pair
from synpro_jax.influence.reference import PACKINGS
from synpro_jax.models import ModelConfig
from synpro_jax.resume_guard import check
from synpro_jax.train.checkpoint import AdamMoments
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.step import TrainStep

log = logging.getLogger(__name__)

SCORE_KEYS = ("influence", "loss_before", "loss_after")
# ProbeConfig.loss_normalization -> TrainStep.loss_normalization
LOSS_NORMALIZATIONS = {"batch_tokens": "batch_tokens", "answer_tokens": "loss_tokens"}


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """The release's probe fine-tune (configs/probe/probe-influence-train.yaml)."""

    steps: int = 100
    learning_rate: float = 1e-4  # constant from the first step: the release's constant scheduler has no warmup
    weight_decay: float = 0.1  # not on embeddings; norms decayed (decay_norm_and_bias: true)
    z_loss: float = 1e-5
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    batch_size: int = 64  # packed rows per step
    seq_len: int = 2048
    accum_steps: int = 1  # micro-batches per step (the release: 64 rows as 8 x 8)
    seed: int = 0
    # What the summed answer-token loss is divided by: "batch_tokens", every input token of the step's 64 rows,
    # prompt tokens included (the release: OLMo's loss over batch_size_in_tokens), or "answer_tokens", their
    # count (a mean over the answer tokens).
    loss_normalization: str = "batch_tokens"
    # How examples are laid into rows: "release", plain seq_len-token slices of the concatenated examples (no
    # document masking, positions run on), or "separate", pretraining's packing (segment ids, positions restart).
    packing: str = "release"

    def __post_init__(self):
        positive_ints(self, "steps", "batch_size", "seq_len", "accum_steps")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"ProbeConfig.loss_normalization={self.loss_normalization!r}: must be one of "
                f"{tuple(LOSS_NORMALIZATIONS)}"
            )
        if self.packing not in PACKINGS:
            raise ValueError(f"ProbeConfig.packing={self.packing!r}: must be one of {PACKINGS}")
        if self.packing == "release" and self.seq_len < 2:
            raise ValueError(f"ProbeConfig.seq_len={self.seq_len}: must be >= 2 with packing='release'")
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"ProbeConfig.batch_size={self.batch_size} is not divisible by accum_steps={self.accum_steps}"
            )
        if self.z_loss < 0:
            raise ValueError(f"ProbeConfig.z_loss={self.z_loss}: must be >= 0")
        self.optimizer()  # the optimizer knobs are validated (and named) there

    def optimizer(self) -> OptimizerConfig:
        try:
            return OptimizerConfig(
                learning_rate=self.learning_rate,
                warmup_steps=0,
                schedule="constant",
                b1=self.b1,
                b2=self.b2,
                eps=self.eps,
                weight_decay=self.weight_decay,
                clip_norm=self.clip_norm,
                decay_norms=True,
            )
        except ValueError as e:
            raise ValueError(str(e).replace("OptimizerConfig.", "ProbeConfig.")) from None

    def train_normalization(self) -> str:
        """The train step's name for :attr:`loss_normalization` (its loss mask is the answer mask)."""
        return LOSS_NORMALIZATIONS[self.loss_normalization]


def finetune(
    cfg: ModelConfig,
    mesh: Mesh,
    params: Any,
    reference,
    pcfg: ProbeConfig = ProbeConfig(),
    *,
    adam: AdamMoments | None = None,
    step: int = 0,
    progress: bool = True,
    on_step: Callable[[int, Any, dict], None] | None = None,
) -> Any:
    """theta': a fine-tuned copy of ``params`` (left untouched) on ``reference`` (a
    :class:`~synpro_jax.influence.reference.PackedReference`; step ``i`` trains on its ``batch(i, batch_size)``).

    ``adam`` holds theta's Adam moments and count (see :func:`synpro_jax.train.params_io.load`): the probe's AdamW
    continues from them, so bias correction continues from the pretraining step. ``None`` starts from zero
    moments at count 0 (logged). ``step`` is theta's training step. ``on_step(step, params, metrics)`` sees each
    step's result (e.g. to keep snapshots). A ``reference`` that says how it packs (``.packing``) must pack as
    ``pcfg.packing`` says.
    """
    packing = getattr(reference, "packing", None)
    if packing is not None and packing != pcfg.packing:
        raise ValueError(
            f"ProbeConfig.packing={pcfg.packing!r}, but the reference rows are packed {packing!r}; "
            "build the PackedReference with packing=ProbeConfig.packing"
        )
    ts = TrainStep(
        cfg,
        mesh,
        pcfg.optimizer(),
        z_loss=pcfg.z_loss,
        accum_steps=pcfg.accum_steps,
        loss_normalization=pcfg.train_normalization(),
    )
    state = ts.init(jax.random.key(pcfg.seed), params=params)  # a fresh copy: params are never donated
    if adam is None:
        log.warning(
            "the probe's theta has no optimizer state (an HF directory): AdamW starts from zero moments "
            "at count 0, where the release continues the checkpoint's"
        )
    state = ts.continue_from(state, adam, step)
    bar = tqdm(total=pcfg.steps, desc="probe fine-tune", unit="step", disable=not progress or jax.process_index() != 0)
    for i in range(pcfg.steps):
        state, metrics = ts(state, ts.shard_batch(reference.batch(i, pcfg.batch_size)))
        if on_step is not None:
            on_step(i + 1, state.params, metrics)
        heartbeat.beat()
        bar.update(1)
        if (i + 1) % 10 == 0 or i + 1 == pcfg.steps:
            bar.set_postfix(ref_loss=f"{float(metrics['loss']):.3f}")
    bar.close()
    return state.params


class Probe:
    """Scores documents by influence = L_theta - L_theta' (two forward passes, sharded over the mesh)."""

    def __init__(self, cfg: ModelConfig, mesh: Mesh, params: Any, params_ft: Any, max_len: int = 2048):
        self.cfg, self.mesh, self.max_len = cfg, mesh, max_len
        shardings = models.param_shardings(cfg, mesh)
        self.params = jax.device_put(params, shardings)
        self.params_ft = jax.device_put(params_ft, shardings)

    def score(self, tokens: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Rows [B, L] (L <= max_len + 1) with masks -> influence, loss_before, loss_after ([B] float32), where
        influence = loss_before - loss_after (positive: x helps the reference task)."""
        rows = sharding.batch_sharding(self.mesh)
        ways = sharding.batch_shards(self.mesh)
        if len(tokens) % ways:
            raise ValueError(
                f"influence batch of {len(tokens)} rows does not divide over the mesh's {ways} data "
                "shards; make the batch size a multiple of it"
            )
        tokens = jax.device_put(np.asarray(tokens, np.int32), rows)
        mask = jax.device_put(np.asarray(mask, np.float32), rows)
        with jax.set_mesh(self.mesh):
            before, after = compiled_loss_pair(self.cfg, self.mesh)(self.params, self.params_ft, tokens, mask)
        before, after = sharding.to_host(before), sharding.to_host(after)
        return {"influence": before - after, "loss_before": before, "loss_after": after}

    def rows(self, docs: Sequence[np.ndarray], batch_size: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Documents cut to max_len + 1 tokens, padded into a fixed [batch_size, max_len + 1] block (one shape,
        one compile). Padding rows and tokens are masked out."""
        length = self.max_len + 1
        tokens = np.full((batch_size, length), pad_id, np.int32)
        mask = np.zeros((batch_size, length), np.float32)
        for i, doc in enumerate(docs):
            d = np.asarray(doc[:length], np.int32)
            tokens[i, : len(d)] = d
            mask[i, : len(d)] = 1.0
        return tokens, mask

    def score_docs(self, docs: Sequence[np.ndarray], batch_size: int, pad_id: int = 0) -> dict[str, np.ndarray]:
        out = {k: [] for k in SCORE_KEYS}
        for start in range(0, len(docs), batch_size):
            chunk = docs[start : start + batch_size]
            scores = self.score(*self.rows(chunk, batch_size, pad_id))
            for k in out:
                out[k].append(scores[k][: len(chunk)])
        return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in out.items()}


# --- corpus scoring -------------------------------------------------------------------------------------------


def _atomic_savez(path: Path, **arrays) -> None:
    atomic.write_file(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def _atomic_json(path: Path, obj) -> None:
    atomic.write_json(path, obj, sort_keys=True)


def unique_keys(doc_ids: Sequence[str]) -> list[str]:
    """Document ids as score keys: a repeated id gets ``#2``, ``#3``... in corpus order (logged), so every
    document has its own key and the keys are a pure function of the corpus."""
    seen: collections.Counter = collections.Counter()
    keys = []
    for i in doc_ids:
        i = str(i)
        seen[i] += 1
        keys.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    repeated = sum(1 for c in seen.values() if c > 1)
    if repeated:
        log.warning("%d document ids occur more than once; their repeats are keyed id#2, id#3, ...", repeated)
    if len(set(keys)) != len(keys):  # an original id such as "a#2" beside a repeated "a"
        raise ValueError(
            "document ids are not unique even after numbering repeats (an id like 'x#2' collides); "
            "give the corpus unique ids"
        )
    return keys


def _load_part(path: Path) -> dict[str, np.ndarray]:
    try:
        with atomic.load_npz(path) as z:  # numpy refuses pickles: ids are stored as fixed-width unicode
            part = {k: z[k] for k in ("ids",) + SCORE_KEYS}
    except Exception as e:
        raise ValueError(f"{path}: unreadable score part ({e}); delete it to score its documents again") from e
    n = len(part["ids"])
    if any(len(part[k]) != n for k in SCORE_KEYS):
        raise ValueError(f"{path}: {n} ids but {[len(part[k]) for k in SCORE_KEYS]} scores")
    return part


def score_corpus(
    probe: Probe,
    docs: Sequence[np.ndarray],
    doc_ids: Sequence[str],
    out_dir: str | Path,
    *,
    fingerprint: dict | None = None,
    batch_size: int = 32,
    chunk_docs: int = 512,
    pad_id: int = 0,
    progress: bool = True,
) -> Path:
    """Score every document; returns ``out_dir/influence.npz`` (ids, influence, loss_before, loss_after), in
    corpus order, keyed by document id (see :func:`unique_keys`).

    Chunks of ``chunk_docs`` documents are written atomically under ``out_dir/parts`` with their ids; a restarted
    job scores only the ids no part holds, so changing ``chunk_docs`` or ``batch_size`` between runs is safe.
    ``fingerprint`` names what the scores depend on (theta's step, the probe config, the vocabulary, the corpus
    files...; ``max_len`` is added here): a directory made under another fingerprint is refused, naming the field.
    The merged output is checked to hold exactly one score per id.

    On several processes each host scores, on its own devices (``probe`` must sit on a
    :func:`synpro_jax.sharding.host_mesh`), the documents :func:`synpro_jax.distributed.host_of` gives it, and
    writes its own parts; process 0 merges them once every host is done. A killed host loses only its unfinished
    chunk, and a rerun (with any process count) scores only what no part holds.
    """
    if len(docs) != len(doc_ids):
        raise ValueError(f"score_corpus: {len(docs)} documents but {len(doc_ids)} ids")
    if batch_size < 1 or chunk_docs < 1:
        raise ValueError(f"score_corpus batch_size={batch_size}, chunk_docs={chunk_docs}: must be >= 1")
    share = distributed.HostShare("score_corpus", out_dir)
    index, count = share.index, share.count
    if count > 1 and not all(d.process_index == index for d in probe.mesh.devices.flat):
        raise ValueError(
            "score_corpus on several processes scores each host's documents on its own devices: "
            "build the Probe on sharding.host_mesh(mesh)"
        )
    keys = unique_keys(doc_ids)
    fp = {
        **(fingerprint or {}),
        "max_len": probe.max_len,
        "documents": {"count": len(docs), "ids_sha1": _ids_digest(keys)},
    }
    out_dir = Path(out_dir)
    final, parts, manifest_path = out_dir / "influence.npz", out_dir / "parts", out_dir / "manifest.json"
    if manifest_path.exists():
        recorded = json.loads(manifest_path.read_text()).get("fingerprint")
        if not isinstance(recorded, dict):
            raise ValueError(
                f"{manifest_path} records no fingerprint (written by an older synpro), so these "
                "scores cannot be checked against this job; score into a new directory"
            )
        check(recorded, fp, str(out_dir), "use a new output directory (or delete this one) to score again")
    elif index == 0:
        parts.mkdir(parents=True, exist_ok=True)
        _atomic_json(manifest_path, {"fingerprint": fp})
    if final.exists():
        _verify_final(final, keys)
        return final

    done: dict[str, Path] = {}
    for path in sorted(parts.glob("part-*.npz")) if parts.is_dir() else []:
        for k in _load_part(path)["ids"].tolist():
            if k in done:
                raise ValueError(f"document {k!r} is scored in both {done[k]} and {path}")
            done[k] = path
    stray = set(done) - set(keys)
    if stray:
        raise ValueError(f"{parts} holds scores of {len(stray)} ids not in this corpus (e.g. {sorted(stray)[0]!r})")
    share.listed()  # every host has seen what is done before any writes
    mine = share.mine(keys)
    todo = [i for i in mine if keys[i] not in done]
    parts.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="influence", unit="doc", disable=not progress)
    for c in range(0, len(todo), chunk_docs):
        idx = todo[c : c + chunk_docs]
        scores = probe.score_docs([docs[i] for i in idx], batch_size, pad_id)
        path = parts / f"part-{idx[0]:09d}-{idx[-1]:09d}.npz"  # first ids differ: no two hosts pick one name
        if path.exists():
            raise ValueError(f"{path} exists but its documents were not scored; delete it and rerun")
        _atomic_savez(path, ids=np.array([keys[i] for i in idx], dtype=str), **scores)
        bar.update(len(idx))
        heartbeat.beat()
    bar.close()
    share.gather()
    if index == 0:
        by_id: dict[str, tuple[float, float, float]] = {}
        for path in sorted(parts.glob("part-*.npz")):
            part = _load_part(path)
            for j, k in enumerate(part["ids"].tolist()):
                if k in by_id:
                    raise ValueError(f"document {k!r} is scored twice (again in {path})")
                by_id[k] = tuple(float(part[s][j]) for s in SCORE_KEYS)
        missing = [k for k in keys if k not in by_id]
        if missing or len(by_id) != len(keys):
            raise ValueError(f"{parts}: {len(by_id)} scores for {len(keys)} documents; missing e.g. {missing[:3]}")
        merged = np.array([by_id[k] for k in keys], np.float32).reshape(len(keys), len(SCORE_KEYS))
        _atomic_savez(final, ids=np.array(keys, dtype=str), **{s: merged[:, j] for j, s in enumerate(SCORE_KEYS)})
        _verify_final(final, keys)
    share.merged()
    return final


def _verify_final(path: Path, keys: Sequence[str]) -> None:
    """As many scores as ids, no duplicate ids, and exactly this corpus's ids in its order."""
    with atomic.load_npz(path) as z:
        ids = z["ids"].tolist()
        lengths = {k: len(z[k]) for k in SCORE_KEYS}
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate document ids")
    if any(n != len(ids) for n in lengths.values()):
        raise ValueError(f"{path}: {len(ids)} ids but score lengths {lengths}")
    if ids != list(keys):
        raise ValueError(f"{path}: its ids are not this corpus's documents in order")


def _ids_digest(ids: Sequence[str]) -> str:
    h = hashlib.sha1()
    for i in ids:
        h.update(str(i).encode() + b"\0")
    return h.hexdigest()
