"""The influence probe, as in the SynPro release.

1. Copy the pretraining checkpoint theta and fine-tune the copy on the reference task (defaults: 100 steps, AdamW
   lr 1e-4, 10 warmup steps then constant, weight decay 0.1, loss on answer tokens only): theta'.
2. influence(x) = L_theta(x) - L_theta'(x), the mean token loss of document x cut to ``max_len`` tokens. Positive
   means the reference fine-tune made x more likely.

:func:`score_corpus` scores a whole corpus in fixed-shape batches sharded over the mesh, writing each chunk
atomically so a killed job resumes where it stopped, then one ``influence.npz`` aligned with the document ids.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from synpro_jax import models, sharding
from synpro_jax.checks import positive_ints
from synpro_jax.influence.kernel import example_losses
from synpro_jax.models import ModelConfig
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.step import TrainStep

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    steps: int = 100
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.1
    batch_size: int = 64
    seq_len: int = 2048
    seed: int = 0

    def __post_init__(self):
        positive_ints(self, "steps", "batch_size", "seq_len")
        if self.warmup_steps < 0 or self.learning_rate <= 0:
            raise ValueError(f"ProbeConfig: warmup_steps={self.warmup_steps} and learning_rate="
                             f"{self.learning_rate} must be >= 0 and > 0")


def finetune(cfg: ModelConfig, mesh: Mesh, params: Any, ref_tokens: np.ndarray, ref_mask: np.ndarray,
             pcfg: ProbeConfig = ProbeConfig(), progress: bool = True,
             on_step: Callable[[int, Any], None] | None = None) -> Any:
    """theta': a fine-tuned copy of ``params`` (left untouched) on reference rows [N, T+1] with answer masks.

    Batch ``i`` takes rows of a seeded permutation (reshuffled each pass), so the result is reproducible.
    ``on_step(step, params)`` sees the parameters after every step (e.g. to keep snapshots).
    """
    if ref_tokens.shape != ref_mask.shape or ref_tokens.ndim != 2:
        raise ValueError(f"reference tokens {ref_tokens.shape} and mask {ref_mask.shape} must be equal [N, T+1]")
    opt = OptimizerConfig(learning_rate=pcfg.learning_rate, warmup_steps=pcfg.warmup_steps, schedule="constant",
                          weight_decay=pcfg.weight_decay)
    step = TrainStep(cfg, mesh, opt)
    state = step.init(jax.random.key(pcfg.seed), params=params)  # a fresh copy: params are never donated
    n = len(ref_tokens)
    bar = tqdm(total=pcfg.steps, desc="probe fine-tune", unit="step", disable=not progress)
    for i in range(pcfg.steps):
        epoch, k = divmod(i * pcfg.batch_size, n)
        order = np.concatenate([np.random.default_rng([pcfg.seed, epoch + j]).permutation(n)
                                for j in range(pcfg.batch_size // n + 2)])
        rows = order[k:k + pcfg.batch_size]
        batch = {"inputs": ref_tokens[rows, :-1], "targets": ref_tokens[rows, 1:], "loss_mask": ref_mask[rows, 1:]}
        state, metrics = step(state, step.shard_batch(batch))
        if on_step is not None:
            on_step(i + 1, state.params)
        bar.update(1)
        if (i + 1) % 10 == 0 or i + 1 == pcfg.steps:
            bar.set_postfix(ref_loss=f"{float(metrics['loss']):.3f}")
    bar.close()
    return state.params


@functools.lru_cache(maxsize=16)
def _loss_fn(cfg: ModelConfig, mesh: Mesh):
    p_shard = models.param_shardings(cfg, mesh)
    rows = sharding.batch_sharding(mesh)
    vec = NamedSharding(mesh, sharding.logical_to_spec(("batch",)))

    def both(p0, p1, tokens, mask):
        return example_losses(cfg, p0, tokens, mask), example_losses(cfg, p1, tokens, mask)

    return jax.jit(both, in_shardings=(p_shard, p_shard, rows, rows), out_shardings=(vec, vec))


class Probe:
    """Scores documents by L_theta - L_theta' (two forward passes, sharded)."""

    def __init__(self, cfg: ModelConfig, mesh: Mesh, params: Any, params_ft: Any, max_len: int = 2048):
        self.cfg, self.mesh, self.max_len = cfg, mesh, max_len
        shardings = models.param_shardings(cfg, mesh)
        self.params = jax.device_put(params, shardings)
        self.params_ft = jax.device_put(params_ft, shardings)

    def score(self, tokens: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Rows [B, L] (L <= max_len + 1) with masks -> influence, loss_before, loss_after ([B] float32)."""
        rows = sharding.batch_sharding(self.mesh)
        tokens = jax.device_put(np.asarray(tokens, np.int32), rows)
        mask = jax.device_put(np.asarray(mask, np.float32), rows)
        with jax.set_mesh(self.mesh):
            before, after = _loss_fn(self.cfg, self.mesh)(self.params, self.params_ft, tokens, mask)
        before, after = np.asarray(before), np.asarray(after)
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
        out = {"influence": [], "loss_before": [], "loss_after": []}
        for start in range(0, len(docs), batch_size):
            chunk = docs[start:start + batch_size]
            scores = self.score(*self.rows(chunk, batch_size, pad_id))
            for k in out:
                out[k].append(scores[k][: len(chunk)])
        return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in out.items()}


def _atomic_savez(path: Path, **arrays) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def score_corpus(probe: Probe, docs: Sequence[np.ndarray], doc_ids: Sequence[str], out_dir: str | Path, *,
                 batch_size: int = 32, chunk_batches: int = 16, pad_id: int = 0, progress: bool = True) -> Path:
    """Score every document; returns ``out_dir/influence.npz`` (ids, influence, loss_before, loss_after).

    Each chunk of ``batch_size * chunk_batches`` documents is written atomically under ``out_dir/parts``; a
    restarted job skips finished chunks. A finished ``influence.npz`` for other documents is an error, not
    overwritten.
    """
    out_dir = Path(out_dir)
    final = out_dir / "influence.npz"
    parts = out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    manifest = {"num_docs": len(docs), "ids_sha": _ids_digest(doc_ids), "max_len": probe.max_len}
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old != manifest:
            raise ValueError(f"{out_dir} holds scores of another corpus or max_len ({old}); use a new directory")
    else:
        manifest_path.write_text(json.dumps(manifest))
    if final.exists():
        return final
    chunk = batch_size * chunk_batches
    starts = list(range(0, len(docs), chunk))
    bar = tqdm(total=len(docs), desc="influence", unit="doc", disable=not progress)
    for start in starts:
        part = parts / f"part-{start:09d}.npz"
        n = min(chunk, len(docs) - start)
        if not part.exists():
            scores = probe.score_docs(docs[start:start + n], batch_size, pad_id)
            _atomic_savez(part, **scores)
        bar.update(n)
    bar.close()
    merged = {k: [] for k in ("influence", "loss_before", "loss_after")}
    for start in starts:
        with np.load(parts / f"part-{start:09d}.npz") as z:
            for k in merged:
                merged[k].append(z[k])
    _atomic_savez(final, ids=np.array(list(doc_ids), dtype=object),
                  **{k: np.concatenate(v) for k, v in merged.items()})
    return final


def _ids_digest(ids: Sequence[str]) -> str:
    import hashlib

    h = hashlib.sha1()
    for i in ids:
        h.update(str(i).encode() + b"\0")
    return h.hexdigest()
