"""The pretraining loop: sharded steps over a deterministic data stream, validation, metrics, checkpoints.

A :class:`Trainer` is one resumable stage. ``run()`` restores the latest checkpoint in ``out_dir`` if there is
one (refusing a checkpoint written under a different configuration), trains to ``num_steps`` or until the
validation loss plateaus, and returns a summary. Because batch ``s`` is a pure function of the step number (and
of the stage's stream starts, fixed for the stage), a run killed at any point and restarted continues exactly as
if it had never stopped. SIGTERM (TPU preemption) saves a checkpoint after the current step and returns with
``preempted=True``.

A stage that continues another run (``init_step``, a SynPro round) continues its data too when
``TrainerConfig.data_start`` gives the position the previous stage reached (its summary's ``data``): each stream
of the mixture goes on from the rows already read, a stream new in this stage starts at row 0. The summary's
``data`` says, per stream, which rows the stage read, their tokens, the distinct document tokens among them
(a document read in two epochs counted once), the epochs, and the position the next stage continues from.

Validation reads the held-out stream from its first row, in the train step's micro-batches, and never past the
end of its first epoch: a held-out set smaller than ``eval_batches`` global batches is evaluated once, whole.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import hashlib
import json
import logging
import math
import time
from typing import Any

from etils.epath import Path
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from synpro_jax import atomic, distributed, sharding
from synpro_jax.checks import positive_ints
from synpro_jax.data.packing import PackedStream
from synpro_jax.data.pipeline import TrainBatches, continue_streams
from synpro_jax.distributed import Preemption
from synpro_jax.models import LossSums, ModelConfig
from synpro_jax.resume_guard import resume_guard
from synpro_jax.train.checkpoint import Checkpointer
from synpro_jax.train.metrics import device_peak_flops, save_png
from synpro_jax.train.optimizer import OptimizerConfig
from synpro_jax.train.plateau import PlateauDetector
from synpro_jax.train.step import TrainStep, batch_loss_sums
from synpro_jax.train.step_loop import LoopSettings, Step, run_steps

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    out_dir: str
    num_steps: int
    global_batch: int
    seq_len: int
    z_loss: float = 1e-5
    accum_steps: int = 1
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    plateau_window: int = 3
    plateau_min_rel_improvement: float = 0.01
    stop_on_plateau: bool = False
    # Keep the parameters of the step with the lowest validation loss in out_dir/best (an orbax checkpoint of
    # the params alone, readable as a run), for readings at the best checkpoint.
    keep_best: bool = False
    seed: int = 0
    progress: bool = True
    # The data position a continuing stage starts from (the loop sets it from the previous stage's summary): per
    # stream name, the token position the previous stage reached, an int or {"tokens": n, "stream": identity}
    # (its summary's data[name]["position_tokens"] and ["stream"]). Empty: every stream starts at row 0.
    data_start: Any = ()

    def __post_init__(self):
        positive_ints(
            self,
            "num_steps",
            "global_batch",
            "seq_len",
            "accum_steps",
            "log_every",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
            "keep_checkpoints",
        )
        start = self.data_start or {}
        if not isinstance(start, Mapping):  # the normalized form below
            start = {
                name: tokens if identity is None else {"tokens": tokens, "stream": identity}
                for name, tokens, identity in start
            }
        entries = []
        for name, entry in start.items():
            tokens, identity = (
                (entry.get("tokens"), entry.get("stream")) if isinstance(entry, Mapping) else (entry, None)
            )
            if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 0:
                raise ValueError(
                    f"TrainerConfig.data_start[{name!r}]={entry!r}: give a non-negative token "
                    "position, or {'tokens': n, 'stream': identity}"
                )
            entries.append((str(name), int(tokens), None if identity is None else str(identity)))
        object.__setattr__(self, "data_start", tuple(sorted(entries)))  # hashable, as a frozen config should be
        if self.global_batch % self.accum_steps:
            raise ValueError(
                f"TrainerConfig.global_batch={self.global_batch} is not divisible by accum_steps={self.accum_steps}"
            )

    def data_start_positions(self) -> dict:
        """``data_start`` as :func:`~synpro_jax.data.pipeline.continue_streams` takes it."""
        return {
            name: tokens if identity is None else {"tokens": tokens, "stream": identity}
            for name, tokens, identity in self.data_start
        }


def plot_loss_curve(records: list[dict], path: Path, title: str = "") -> None:
    """Training and validation loss against step, as a PNG (written atomically)."""
    import matplotlib  # only process 0 draws, and no other code needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def micro_batched_eval(step: TrainStep):
    """A jitted ``(params, batch) -> LossSums`` that splits a global batch into the train step's micro-batches
    (the same split and layout as ``loss_and_grads``), so evaluation never holds more activations than training."""
    cfg, accum = step.cfg, step.accum_steps

    def fn(params, batch):
        with sharding.use_rules(step.rules):
            if accum == 1:
                return batch_loss_sums(cfg, params, batch)
            b = batch["inputs"].shape[0]

            def split(x):  # row i goes to micro-batch i % A, so each device keeps its share of every micro-batch
                x = x.reshape((b // accum, accum) + x.shape[1:]).swapaxes(0, 1)
                return sharding.constrain(x, (None, "batch", "length"))

            def body(total, mb):
                return total + batch_loss_sums(cfg, params, mb), None

            zero = LossSums(jnp.float32(0), jnp.float32(0), jnp.float32(0))
            return jax.lax.scan(body, zero, jax.tree.map(split, batch))[0]

    return jax.jit(
        fn, in_shardings=(step.param_shardings, step.batch_sharding), out_shardings=sharding.replicated(step.mesh)
    )


def check_config(model_cfg: ModelConfig, cfg: TrainerConfig, batch_shards: int) -> None:
    """What a run refuses before it builds anything (``synpro sweep`` checks every point with it up front);
    ``batch_shards``: how many ways the mesh splits the batch (sharding.batch_shards)."""
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(f"TrainerConfig.seq_len={cfg.seq_len} exceeds ModelConfig.max_seq_len={model_cfg.max_seq_len}")
    if cfg.global_batch % batch_shards:
        raise ValueError(
            f"TrainerConfig.global_batch={cfg.global_batch} does not divide over the mesh's "
            f"{batch_shards} data shards (MeshConfig data x fsdp)"
        )


BEST_DIR = "best"


class BestParams:
    """The parameters at the lowest validation loss so far: an orbax checkpoint holding only ``train/params``
    and ``train/step`` (so :func:`~synpro_jax.train.checkpoint.read_params` reads it as a run), one step kept.
    A resumed run first drops a best step later than the checkpoint it resumes from: it trains those steps again,
    identically, and saves them again if they are still the best."""

    def __init__(self, directory: Path, enabled: bool):
        self.checkpointer = Checkpointer(directory, save_every=1, keep=1, async_save=False) if enabled else None

    def save(self, step: int, params: Any, val_loss: float) -> None:
        tree = {"train": {"params": params, "step": np.asarray(step, np.int32)}}
        self.checkpointer.save(step, tree, {"step": step, "val_loss": val_loss}, force=True)
        self.checkpointer.wait()

    def forget_after(self, step: int) -> None:
        if self.checkpointer is not None:
            for s in self.checkpointer.manager.all_steps():
                if s > step:
                    self.checkpointer.manager.delete(s)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()


class Trainer:
    def __init__(
        self,
        model_cfg: ModelConfig,
        mesh: Mesh,
        opt_cfg: OptimizerConfig,
        cfg: TrainerConfig,
        train_stream,  # a streams.MixtureInput (the seqio Mixture) or any stream with .rows
        val_stream: PackedStream | None = None,
        init_params: Any | None = None,
        data_fingerprint: str = "",
        summary_extra: dict | None = None,
        init_adam: Any | None = None,
        init_step: int = 0,
        init_source: str = "",
    ):
        """``init_params`` start a fresh run from given weights; with ``init_adam`` (AdamMoments) and
        ``init_step`` it continues another run's optimizer and schedule too (a SynPro round continuing from the
        plateau checkpoint on a new mixture). ``init_source`` names that start in the run's fingerprint. A
        checkpoint in ``out_dir`` always wins: a restarted run resumes its own progress."""
        if train_stream.row_len != cfg.seq_len + 1:
            raise ValueError(
                f"the train stream packs rows of {train_stream.row_len} tokens but "
                f"TrainerConfig.seq_len={cfg.seq_len} needs {cfg.seq_len + 1}"
            )
        check_config(model_cfg, cfg, sharding.batch_shards(mesh))
        self.model_cfg, self.mesh, self.opt_cfg, self.cfg = model_cfg, mesh, opt_cfg, cfg
        self.out_dir = Path(cfg.out_dir)
        self.step_fn = TrainStep(model_cfg, mesh, opt_cfg, z_loss=cfg.z_loss, accum_steps=cfg.accum_steps)
        # the stream from this stage's data position on, and a counter of what the stage reads (see the docstring)
        train_stream, self.data_count, self.data_from = continue_streams(train_stream, cfg.data_start_positions())
        self.batches = TrainBatches(train_stream, cfg.global_batch, self.step_fn.batch_sharding)
        self.val_batches = (
            TrainBatches(val_stream, cfg.global_batch, self.step_fn.batch_sharding) if val_stream else None
        )
        self.eval_step = micro_batched_eval(self.step_fn)
        self.eval_plan = self._plan_validation(val_stream)
        self.init_params, self.init_adam, self.init_step = init_params, init_adam, int(init_step)
        self.summary_extra = dict(summary_extra or {})
        self.plateau = PlateauDetector(cfg.plateau_window, cfg.plateau_min_rel_improvement)
        self.best: dict = {}  # {"step", "val_loss"} of out_dir/best, with keep_best
        self.stream_names = getattr(train_stream, "names", None)
        # What decides the run's results, recorded in every checkpoint: a restart with other settings is refused
        # naming each field that differs (synpro_jax/resume_guard.py).
        self.settings = {
            "model": model_cfg.settings(),
            "optimizer": dataclasses.asdict(opt_cfg),
            "global_batch": cfg.global_batch,
            "seq_len": cfg.seq_len,
            "accum_steps": cfg.accum_steps,
            "z_loss": cfg.z_loss,
            "seed": cfg.seed,
            "data": data_fingerprint,
            **({"init": {"source": init_source, "step": int(init_step)}} if init_source else {}),
            **({"data_start": self._stream_starts()} if any(self._stream_starts().values()) else {}),
        }
        # The digest older checkpoints recorded instead (accepted when it matches), and what the hosts agree on.
        self.fingerprint = hashlib.sha1(
            json.dumps(
                [
                    model_cfg.settings(),
                    dataclasses.asdict(opt_cfg),
                    cfg.global_batch,
                    cfg.seq_len,
                    cfg.accum_steps,
                    cfg.z_loss,
                    cfg.seed,
                    data_fingerprint,
                ]
                + ([init_source, int(init_step)] if init_source else [])
                + ([["data_start", self._stream_starts()]] if any(self._stream_starts().values()) else []),
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:16]
        self.preemption = Preemption()  # SIGTERM: every host saves the same step, then the job exits 143

    # --- data position -------------------------------------------------------------------------------------------
    def _stream_starts(self) -> dict[str, int]:
        """The row each stream of the mixture starts at in this stage."""
        if self.data_count is None:
            return {}
        return {name: int(row) for name, row in zip(self.data_count.names, self.data_count.starts)}

    def data_read(self, step: int) -> dict:
        """Per stream, what the stage's first ``step`` steps read (``MixedStream.report``) and how the stream
        started ("continued", "new" or "changed")."""
        if self.data_count is None:
            return {}
        report = self.data_count.report(step * self.cfg.global_batch)
        return {name: {**r, "from": self.data_from.get(name, "new")} for name, r in report.items()}

    # --- state ---------------------------------------------------------------------------------------------------
    def _fresh_state(self) -> dict:
        train = self.step_fn.init(jax.random.key(self.cfg.seed), params=self.init_params)
        if self.init_adam is not None or self.init_step:
            train = self.step_fn.continue_from(train, self.init_adam, self.init_step)
        # Replicated on the mesh, not on one local device: every host then saves and restores the same array.
        # placed from host values: device_put of a one-device array onto a mesh spanning other processes can
        # build an array orbax cannot save (seen with one device per host)
        rng = sharding.host_to_global(
            np.asarray(jax.random.key_data(jax.random.key(self.cfg.seed + 1))), sharding.replicated(self.mesh)
        )
        return {"train": train, "rng": rng}

    def _meta(self, step: int) -> dict:
        meta = {
            "step": step,
            "rows_consumed": step * self.cfg.global_batch,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "plateau": self.plateau.state_dict(),
            "best": dict(self.best),
            "time": time.time(),
        }
        if self.data_count is not None:  # each stream's next row: the data position at this checkpoint
            meta["stream_rows"] = {
                name: int(start + n)
                for name, start, n in zip(
                    self.data_count.names,
                    self.data_count.starts,
                    self.data_count.rows_read(step * self.cfg.global_batch),
                )
            }
        return meta

    def _plan_validation(self, val_stream) -> tuple[int, int]:
        """(global batches per evaluation, stream tokens it may read): at most ``eval_batches`` batches and never
        past the held-out stream's first epoch, so no document is evaluated twice."""
        cfg = self.cfg
        limit = np.iinfo(np.int64).max
        if val_stream is None:
            return 0, limit
        row_len, wanted_rows = val_stream.row_len, cfg.eval_batches * cfg.global_batch
        epoch_tokens = getattr(val_stream, "epoch_tokens", None)
        if epoch_tokens is None and hasattr(val_stream, "rows_per_epoch"):
            epoch_tokens = round(val_stream.rows_per_epoch * row_len)
        if epoch_tokens is None or epoch_tokens >= wanted_rows * row_len:
            return cfg.eval_batches, limit
        batches = math.ceil(epoch_tokens / (cfg.global_batch * row_len))
        if jax.process_index() == 0:
            log.warning(
                "validation: the held-out set is %d tokens (%.1f rows of %d) but TrainerConfig.eval_batches="
                "%d x global_batch=%d asks for %d rows; each evaluation reads the held-out set once (%d "
                "batch(es)) instead of repeating documents. Hold out more documents or lower eval_batches.",
                epoch_tokens,
                epoch_tokens / row_len,
                row_len,
                cfg.eval_batches,
                cfg.global_batch,
                wanted_rows,
                batches,
            )
        return batches, int(epoch_tokens)

    def validation_batch(self, i: int) -> dict[str, jax.Array]:
        """Global validation batch ``i``, with the targets past the plan's token limit masked out."""
        vb, (_, token_limit) = self.val_batches, self.eval_plan
        local, _ = vb.host_rows(i)
        local = dict(local)
        row_len = vb.seq_len + 1
        # row r holds stream positions [r * L, (r + 1) * L); target j of the row sits at r * L + j + 1
        target_pos = vb.host_row_indices(i)[:, None].astype(np.int64) * row_len + np.arange(1, row_len)[None, :]
        local["loss_mask"] = local["loss_mask"] * (target_pos < token_limit).astype(local["loss_mask"].dtype)
        shape = (vb.global_batch, vb.seq_len)
        return {k: jax.make_array_from_process_local_data(vb.sharding, v, shape) for k, v in local.items()}

    def evaluate(self, params) -> dict:
        if self.val_batches is None:
            return {}
        nll = tokens = 0.0
        for i in range(self.eval_plan[0]):
            with jax.set_mesh(self.mesh):
                sums = jax.device_get(self.eval_step(params, self.validation_batch(i)))
            nll, tokens = nll + float(sums.nll), tokens + float(sums.tokens)
        val = nll / max(tokens, 1.0)
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0)), "val_tokens": tokens}

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self, on_start=None) -> dict:
        """Train (resuming from ``out_dir``'s checkpoint if there is one). ``on_start`` is called once that
        checkpoint is accepted, before the first step: a refused restart must not rewrite the run's files."""
        cfg = self.cfg
        distributed.agree(str(self.out_dir), "the run directory (synpro.TrainerConfig.out_dir)")
        distributed.agree(self.fingerprint, "the run's configuration and data (its fingerprint)")
        fresh = self._fresh_state()
        self.init_params = self.init_adam = None  # in the state now: do not hold a second copy for the run
        guard = resume_guard(
            self.settings,
            f"{self.out_dir / 'checkpoints'}",
            remedy="use a new out_dir",
            legacy=lambda meta: meta.get("fingerprint") == self.fingerprint,
        )
        peak = device_peak_flops(self.model_cfg.dtype)[0] * jax.device_count()
        fpt = self.model_cfg.train_flops_per_token(cfg.seq_len)
        # throughput over the steps since the last record, compilation (the first step of a call) left out
        window = {"t": time.perf_counter(), "tokens": 0, "first": True}
        status = {"plateaued": False}
        best = BestParams(self.out_dir / BEST_DIR, enabled=cfg.keep_best)

        def restored(state, meta, start):
            self.plateau.load_state_dict(meta.get("plateau", {}))
            self.best = dict(meta.get("best") or {})
            best.forget_after(start)
            # A run killed after it stopped on a plateau must not train on when restarted: it is finished.
            status["plateaued"] = self.plateau.plateaued
            log.info("resuming from step %d", start)

        def train(state, done: int) -> Step:
            batch, info = self.batches(done)
            state["train"], metrics = self.step_fn(state["train"], batch)
            step = done + 1
            window["tokens"] += cfg.global_batch * cfg.seq_len
            if window["first"]:  # keep compilation out of the throughput numbers
                jax.block_until_ready(metrics)
                window.update(t=time.perf_counter(), tokens=0, first=False)
            record = None
            if step % cfg.log_every == 0 or step == cfg.num_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = time.perf_counter() - window["t"]
                tps = window["tokens"] / dt if window["tokens"] else float("nan")
                record = {
                    "step": step,
                    **metrics,
                    "tokens_per_s": tps,
                    "tokens_per_s_per_device": tps / jax.device_count(),
                    "mfu": tps * fpt / peak,
                    "epoch": int(info["epochs"].max()),
                }
                window.update(t=time.perf_counter(), tokens=0)
            if self.val_batches is not None and (step % cfg.eval_every == 0 or step == cfg.num_steps):
                record = record or {"step": step}
                record.update(self.evaluate(state["train"].params))
                status["plateaued"] = self.plateau.update(record["val_loss"])
                record["plateau"] = status["plateaued"]
                if cfg.keep_best and record["val_loss"] < self.best.get("val_loss", math.inf):
                    best.save(step, state["train"].params, record["val_loss"])
                    self.best = {"step": step, "val_loss": record["val_loss"]}
            postfix = {k: f"{record[k]:.3f}" for k in ("loss", "val_loss") if k in (record or {})}
            return Step(state, record, postfix)

        outcome = run_steps(
            LoopSettings(
                self.out_dir,
                cfg.num_steps,
                cfg.checkpoint_every,
                keep_checkpoints=cfg.keep_checkpoints,
                async_checkpoints=cfg.async_checkpoints,
                progress=cfg.progress,
            ),
            template=fresh,
            fresh=lambda: fresh,
            guard=guard,
            step=train,
            meta=self._meta,
            on_restore=restored,
            on_start=on_start,
            finished=lambda: status["plateaued"] and cfg.stop_on_plateau,
            preemption=self.preemption,
        )
        state, step, preempted, plateaued = outcome.state, outcome.step, outcome.preempted, status["plateaued"]
        records = outcome.records
        summary = {
            "step": step,
            "preempted": preempted,
            "plateaued": plateaued,
            "out_dir": str(self.out_dir),
            "checkpoint_step": step,
            **self.summary_extra,
        }
        if self.data_count is not None:
            summary["data"] = self.data_read(step)
        last = [r for r in records if "loss" in r]
        if last:
            summary.update({k: last[-1][k] for k in ("loss", "tokens_per_s", "mfu") if k in last[-1]})
        vals = [r["val_loss"] for r in records if "val_loss" in r]
        if vals:
            summary["val_loss"] = vals[-1]
        if self.best:
            summary["best"] = {**self.best, "dir": str(self.out_dir / BEST_DIR)}
        best.close()
        if jax.process_index() == 0 and records:
            plot_loss_curve(records, self.out_dir / "loss_curve.png", title=self.model_cfg.name)
            atomic.write_json(self.out_dir / "summary.json", summary)
        self.state = state
        return summary
