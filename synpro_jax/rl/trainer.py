"""The GRPO loop for a rephrase or reformat generator: rollouts on the mesh, the reward suite, the update.

One step (``GRPOTrainer.train_step``):

1. the step's prompts (:class:`~synpro_jax.rl.prompt_set.PromptSet`, a pure function of the step number);
2. G completions per prompt from the in-graph sampler off one shared prefill (a device-resident batch);
3. the completions as text, scored by the :class:`~synpro_jax.rl.rewards.base.RewardSuite` (weighted total);
4. advantages from the total (``GRPOConfig.advantage_estimator``);
5. the frozen reference's log-probs (beta > 0) and the sampling policy's (num_iterations > 1);
6. ``num_iterations`` updates of :class:`~synpro_jax.rl.learner.GRPOStep`, the sharded step around the loss of
   :mod:`synpro_jax.rl.grpo` (``grpo_loss_terms``: the clipped policy loss, the KL and their aggregation), then
   the new weights go into the sampler through its compiled placement (no recompile).

A run is resumable and exactly-once: orbax checkpoints (atomic, asynchronous) hold the actor and its AdamW state;
the reference is the starting generator, loaded again from its source on a restart and checked against the
checkpoint's fingerprint (so is everything that decides the run: model, GRPO settings, rewards, prompts,
vocabulary, seed). Rollout randomness is drawn from (seed, step). So a job killed at any step and restarted gives
the parameters of an uninterrupted run. SIGTERM saves after the current step and returns ``preempted``. The loop
around the steps is train/step_loop.py's, as for pretraining.

Outputs in ``out_dir``: ``checkpoints/``, ``metrics.jsonl`` and ``tensorboard/``, ``reward_curves.png``,
``summary.json`` and ``export/``: the final generator as an HF OLMo-2 directory with its vocabulary, which
transformers loads and ``synpro synthesize`` takes as ``GENERATOR``. Metrics of a step:

- ``reward/<name>_mean``, ``_std`` per reward and ``reward/total_*`` of the weighted sum; ``reward_failures/<name>``
  (completions given the fallback); ``zero_std_groups`` (share of groups whose total is constant: no signal);
- ``loss``, ``policy_loss``, ``kl``, ``clip_fraction``, ``grad_norm``, ``learning_rate`` of the step's last update;
- ``completion_length`` (generated tokens, a final stop token included) and ``truncated_share`` (completions that
  used their whole budget without a stop token);
- ``time/*_s`` per phase; ``rollout_tokens_per_s`` = generated tokens / rollout time (sampling, the host copy and
  decoding to text); ``update_tokens_per_s`` = prompt + completion tokens x num_iterations / update time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import json
import logging
import os
import time
from typing import Any

from etils.epath import Path
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from synpro_jax import atomic, distributed, sharding
from synpro_jax.checks import positive_ints
from synpro_jax.distributed import Preemption
from synpro_jax.generation import continuous
from synpro_jax.generation.continuous import ContinuousBatcher
from synpro_jax.generation.sampler import Sampler
from synpro_jax.models import ModelConfig, hf
from synpro_jax.resume_guard import resume_guard
from synpro_jax.rl import grpo
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.rl.learner import GRPOStep
from synpro_jax.rl.prompt_set import PromptSet
from synpro_jax.rl.rewards.base import RewardInputs, RewardSuite
from synpro_jax.train import params_io
from synpro_jax.train.metrics import save_png
from synpro_jax.train.step_loop import LoopSettings, Step, run_steps

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
EXPORT_INFO = params_io.EXPORT_INFO  # the provenance file, read back as the policy's step


@dataclasses.dataclass(frozen=True)
class GRPORunConfig:
    """How long and on what a GRPO run trains (gin: ``synpro.GRPORunConfig``); the algorithm is GRPOConfig."""

    out_dir: str
    num_steps: int  # GRPO steps (each: one batch of rollouts, num_iterations updates)
    prompts_per_step: int  # prompts per step; the batch is prompts_per_step * num_generations completions
    accum_steps: int = 1  # micro-batches per update (the release: 4)
    logits_chunk: int | None = None  # completion slots per output-head pass (None: all at once)
    share_prompts: bool = True  # the learner runs each prompt once for its G completions (GRPOStep.prompt_group)
    # Decode slots for the rollouts (continuous batching: a prompt's G completions take G slots, refilled with the
    # next prompt when all G end). None: every row of the step at once. Fewer bound the KV cache; the rollouts
    # are the same either way (each row keeps its stream). Rounded up to a multiple of G x the batch shards.
    rollout_slots: int | None = None
    max_source_chars: int = 7000  # the release's cut of an RL source, at a sentence boundary
    min_source_chars: int = 0
    max_documents: int | None = None  # read at most this many prompt documents
    text_field: str = "text"
    id_field: str | None = None
    log_every: int = 1
    checkpoint_every: int = 20
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    export_dtype: str = "float32"  # of the HF export ("bfloat16" halves it)
    seed: int = 0
    progress: bool = True
    # A step where every group's total reward is constant gives every completion advantage 0: nothing to learn.
    # After this many such steps in a row the run warns; after ``stall_stop_steps`` it stops, naming the cause.
    stall_warn_steps: int = 3
    stall_stop_steps: int | None = 10  # None: never stop

    def __post_init__(self):
        positive_ints(
            self,
            "num_steps",
            "prompts_per_step",
            "accum_steps",
            "max_source_chars",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "stall_warn_steps",
        )
        if self.stall_stop_steps is not None and (
            not isinstance(self.stall_stop_steps, int) or self.stall_stop_steps < self.stall_warn_steps
        ):
            raise ValueError(
                f"GRPORunConfig.stall_stop_steps={self.stall_stop_steps!r}: must be an int >= "
                f"stall_warn_steps={self.stall_warn_steps}, or None to never stop"
            )
        if self.rollout_slots is not None and (not isinstance(self.rollout_slots, int) or self.rollout_slots < 1):
            raise ValueError(f"GRPORunConfig.rollout_slots={self.rollout_slots!r}: must be an int >= 1, or None")
        if self.logits_chunk is not None and (not isinstance(self.logits_chunk, int) or self.logits_chunk < 1):
            raise ValueError(f"GRPORunConfig.logits_chunk={self.logits_chunk!r}: must be an int >= 1, or None")
        if self.export_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"GRPORunConfig.export_dtype={self.export_dtype!r}: 'float32' or 'bfloat16'")
        if self.min_source_chars < 0:
            raise ValueError(f"GRPORunConfig.min_source_chars={self.min_source_chars}: must be >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"GRPORunConfig.seed={self.seed!r}: must be an int >= 0")


def step_seed(seed: int, step: int) -> int:
    """The sampler seed of a step: rollouts differ between steps and repeat exactly on a resumed run."""
    return int(np.random.default_rng([seed, step]).integers(0, 2**31 - 1))


@jax.jit
def _count_tokens(segment_ids: jax.Array) -> jax.Array:
    return jnp.sum(segment_ids > 0)


def reward_metrics(result, num_generations: int) -> dict[str, float]:
    """Mean and std of each reward and of the weighted total, fallback counts, and the share of groups whose
    total is constant (those give zero advantage: nothing to learn from)."""
    out = {}
    for name, v in result.values.items():
        out[f"reward/{name}_mean"] = float(np.mean(v))
        out[f"reward/{name}_std"] = float(np.std(v))
        out[f"reward_failures/{name}"] = float(result.failures.get(name, 0))
    total = np.asarray(result.total, np.float64)
    out["reward/total_mean"] = float(total.mean())
    out["reward/total_std"] = float(total.std())
    groups = total.reshape(-1, num_generations)
    out["zero_std_groups"] = float(np.mean(groups.max(axis=1) == groups.min(axis=1)))
    return out


class GRPOStalled(RuntimeError):
    """Every group had zero reward spread for ``GRPORunConfig.stall_stop_steps`` steps in a row."""


def stall_cause(records: Sequence[dict]) -> str:
    """Why the groups of ``records`` (zero-spread steps) carried no signal, in words: the rewards that were
    constant and their values, and whether every completion ran to its budget."""
    last = records[-1]
    names = sorted(
        k[len("reward/") : -len("_mean")]
        for k in last
        if k.startswith("reward/") and k.endswith("_mean") and k != "reward/total_mean"
    )
    flat = [
        f"{n}={last[f'reward/{n}_mean']:.3f}"
        for n in names
        if all(r.get(f"reward/{n}_std", 1.0) == 0.0 for r in records)
    ]
    parts = [
        f"every reward was constant across all completions ({', '.join(flat)})"
        if len(flat) == len(names)
        else f"constant rewards: {', '.join(flat) or 'none'}"
    ]
    if all(r.get("truncated_share") == 1.0 for r in records):
        parts.append("every completion ran to max_completion_tokens without a stop token")
    fmt = last.get("reward/format_mean")
    if fmt == 0.0:
        parts.append(
            "the generator never writes the answer heading (format 0): start from a generator that "
            "does, e.g. with a supervised warm start (synpro.grpo.warm_start)"
        )
    elif fmt == 1.0:
        parts.append("format is already 1 everywhere and the other rewards do not separate completions")
    return "; ".join(parts)


def plot_reward_curves(records: Sequence[dict], path: Path, title: str = "") -> None:
    """Each reward's mean (and the weighted total) against step, as a PNG written atomically."""
    import matplotlib  # only process 0 draws, and no other code needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {
            k[len("reward/") : -len("_mean")]
            for r in records
            for k in r
            if k.startswith("reward/") and k.endswith("_mean")
        }
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        pts = [(r["step"], r[f"reward/{name}_mean"]) for r in records if f"reward/{name}_mean" in r]
        if pts:
            ax.plot(*zip(*pts), label=name, lw=2 if name == "total" else 1)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def check_config(cfg: ModelConfig, run: GRPORunConfig, algorithm: GRPOConfig, batch_shards: int) -> None:
    """What a run refuses before it builds anything (``synpro sweep`` checks every point with it up front);
    ``batch_shards``: how many ways the mesh splits the batch (sharding.batch_shards)."""
    g = algorithm
    if g.max_prompt_tokens + g.max_completion_tokens > cfg.max_seq_len:
        raise ValueError(
            f"GRPOConfig.max_prompt_tokens={g.max_prompt_tokens} + max_completion_tokens="
            f"{g.max_completion_tokens} exceeds the generator's max_seq_len={cfg.max_seq_len}"
        )
    rows = run.prompts_per_step * g.num_generations
    if rows % (run.accum_steps * batch_shards):
        raise ValueError(
            f"GRPORunConfig.prompts_per_step={run.prompts_per_step} x GRPOConfig.num_generations="
            f"{g.num_generations} = {rows} completions per step must divide into accum_steps="
            f"{run.accum_steps} micro-batches over the mesh's {batch_shards} data shards"
        )
    if run.logits_chunk is not None and g.max_completion_tokens % run.logits_chunk:
        raise ValueError(
            f"GRPORunConfig.logits_chunk={run.logits_chunk} must divide GRPOConfig."
            f"max_completion_tokens={g.max_completion_tokens} (the completion slots)"
        )


class GRPOTrainer:
    """GRPO for one generator on one mesh; see the module docstring.

    ``params`` are the starting generator's (sharded or host arrays): they become both the actor's initial
    weights and the frozen reference. ``vocab`` is the generator's (seqio) vocabulary; ``stop_ids`` end a
    completion besides its EOS. ``fingerprint`` is what else decides the run (generator source, rewards,
    vocabulary): a checkpoint made under another one is refused, naming the field.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        mesh: Mesh,
        params: Any,
        vocab,
        prompts: PromptSet,
        suite: RewardSuite,
        run: GRPORunConfig,
        algorithm: GRPOConfig = GRPOConfig(),
        *,
        stop_ids: Sequence[int] = (),
        fingerprint: dict | None = None,
        vocabulary_files: Sequence[str] = (),
        rules: sharding.Rules = sharding.DEFAULT_RULES,
    ):
        g = algorithm
        check_config(cfg, run, g, sharding.batch_shards(mesh, rules))
        self.cfg, self.mesh, self.vocab, self.prompts, self.suite = cfg, mesh, vocab, prompts, suite
        self.run_cfg, self.grpo = run, g
        self.out_dir = Path(run.out_dir)
        self.stop_ids = sorted({int(vocab.eos_id), *map(int, stop_ids)})
        self.pad_id = int(getattr(vocab, "pad_id", 0) or 0)
        self.vocabulary_files = list(vocabulary_files)
        self.step_fn = GRPOStep(
            cfg,
            mesh,
            g,
            total_steps=run.num_steps * g.num_iterations,
            accum_steps=run.accum_steps,
            logits_chunk=run.logits_chunk,
            prompt_group=g.num_generations if run.share_prompts else 1,
            rules=rules,
        )
        self.init_params = params
        # The actor is built by a jit (fresh buffers, the ones later donated), so the reference can share the
        # starting params' buffers instead of holding another copy.
        self.ref_params = (
            jax.device_put(
                jax.tree.map(lambda x: x if x.dtype == np.float32 else x.astype(np.float32), params),
                self.step_fn.param_shardings,
            )
            if g.beta > 0
            else None
        )
        self.sampler = Sampler(cfg, params, mesh=mesh)
        unit = g.num_generations * self.sampler.batch_shards
        slots = run.rollout_slots or run.prompts_per_step * g.num_generations
        self.rollout_batcher = ContinuousBatcher(
            self.sampler,
            slots=-(-slots // unit) * unit,
            group=g.num_generations,
            max_prompt_tokens=g.max_prompt_tokens,
            max_new_tokens=g.max_completion_tokens,
            eos_id=self.stop_ids,
            pad_id=self.pad_id,
        )
        self.fingerprint = json.loads(
            json.dumps(
                {
                    "model": cfg.settings(),
                    "grpo": dataclasses.asdict(g),
                    "run": {
                        k: v
                        for k, v in dataclasses.asdict(run).items()
                        if k
                        in (
                            "num_steps",
                            "prompts_per_step",
                            "seed",
                            "max_source_chars",
                            "min_source_chars",
                            "max_documents",
                            "accum_steps",
                            "logits_chunk",
                            "share_prompts",
                        )
                    },
                    # numpy's Generator streams decide the prompt order and the rollout seeds
                    "numpy": np.__version__,
                    "prompts": prompts.fingerprint(),
                    "stop_ids": self.stop_ids,
                    **(fingerprint or {}),
                },
                default=str,
            )
        )
        self.preemption = Preemption()  # SIGTERM: every host saves the same step, then the job exits 143

    # --- one step ------------------------------------------------------------------------------------------------
    def rollouts(self, step: int):
        """(prompt items, RolloutBatch) of ``step`` under the sampler's current weights."""
        items = self.prompts.batch(step, self.run_cfg.prompts_per_step)
        g = self.grpo
        rollout = continuous.rollout(
            self.rollout_batcher,
            [it.ids for it in items],
            max_new_tokens=g.max_completion_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            seed=step_seed(self.run_cfg.seed, step),
        )
        return items, rollout

    def completion_texts(self, rollout) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(texts without their stop token, lengths in tokens, finished) of a rollout, on the host."""
        finished = sharding.to_host(rollout.finished).astype(bool)
        ids = rollout.completions()
        texts = [self.vocab.decode(c[:-1] if f and c else c) for c, f in zip(ids, finished)]
        return texts, np.array([len(c) for c in ids]), finished

    def train_step(self, state, step: int) -> tuple[Any, dict]:
        """One GRPO step (``step`` counts from 0); returns the new state and the step's metrics record."""
        g = self.grpo
        t0 = time.perf_counter()
        items, rollout = self.rollouts(step)
        texts, lengths, finished = self.completion_texts(rollout)  # waits for the rollout
        t1 = time.perf_counter()
        sources = [it.source for it in items for _ in range(g.num_generations)]
        group = np.repeat(np.arange(len(items)), g.num_generations)
        result = self.suite(RewardInputs(self.prompts.operation, sources, texts, group))
        if jax.process_count() > 1:  # every host scores; process 0's totals decide (judges may disagree)
            result = dataclasses.replace(
                result, total=np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(result.total, np.float32)))
            )
        advantages = np.asarray(grpo.compute_advantages(result.total, g), np.float32)
        t2 = time.perf_counter()
        batch = {
            "tokens": rollout.tokens,
            "positions": rollout.positions,
            "segment_ids": rollout.segment_ids,
            "completion_mask": rollout.completion_mask,
            "advantages": advantages,
        }
        batch = self.step_fn.place(batch)
        if self.ref_params is not None:
            batch["ref_logp"] = self.step_fn.ref_logprobs(self.ref_params, batch)
        if g.num_iterations > 1:
            batch["old_logp"] = self.step_fn.logprobs(state.params, batch)
        jax.block_until_ready(batch)
        t3 = time.perf_counter()
        for _ in range(g.num_iterations):
            state, metrics = self.step_fn(state, batch)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        t4 = time.perf_counter()
        self.sampler.update_params(state.params)
        real_tokens = float(jax.device_get(_count_tokens(rollout.segment_ids)))
        record = {
            "step": step + 1,
            **reward_metrics(result, g.num_generations),
            **{
                k: metrics[k]
                for k in ("loss", "policy_loss", "kl", "clip_fraction", "grad_norm", "param_norm", "learning_rate")
                if k in metrics
            },
            "completion_length": float(lengths.mean()),
            "truncated_share": float(1.0 - finished.mean()),
            "time/rollout_s": t1 - t0,
            "time/rewards_s": t2 - t1,
            "time/reference_s": t3 - t2,
            "time/update_s": t4 - t3,
            "time/step_s": t4 - t0,
            "rollout_tokens_per_s": float(lengths.sum()) / max(t1 - t0, 1e-9),
            "update_tokens_per_s": real_tokens * g.num_iterations / max(t4 - t3, 1e-9),
        }
        return state, record

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self, on_start: Callable[[], None] | None = None) -> dict:
        """Train to ``num_steps`` (resuming from ``out_dir`` if it holds a checkpoint of this run) and export.
        ``on_start`` is called once the checkpoint (if any) is accepted, before the first step: the place to
        write files describing the run, which a refused restart must not touch."""
        run = self.run_cfg
        if self.init_params is None:
            raise RuntimeError("GRPOTrainer.run() runs once: make a new trainer to run again")
        distributed.agree(str(self.out_dir), "the run directory (synpro.GRPORunConfig.out_dir)")
        distributed.agree(
            json.dumps(self.fingerprint, sort_keys=True, default=str), "the GRPO run's configuration (its fingerprint)"
        )
        # Restore into an abstract template: a restart never holds a fresh state and the restored one at once.
        template = {
            "train": jax.tree.map(
                lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                jax.eval_shape(self.step_fn.init, jax.random.key(run.seed), self.init_params),
                self.step_fn.state_shardings,
            )
        }
        where = f"{self.out_dir / 'checkpoints'} (a GRPO run)"

        def restored(state, meta, start):
            self.sampler.update_params(state["train"].params)
            if jax.process_index() == 0:
                print(f"GRPO: resuming from step {start} ({self.out_dir / 'checkpoints'})", flush=True)

        stalled: list[dict] = []  # the current run of zero-spread steps

        def train(state, done: int) -> Step:
            state["train"], record = self.train_step(state["train"], done)
            step = done + 1
            postfix = {
                "reward": f"{record['reward/total_mean']:.3f}",
                "signal": f"{1.0 - record['zero_std_groups']:.2f}",
                "kl": f"{record.get('kl', 0.0):.2g}",
            }
            stalled[:] = stalled + [record] if record["zero_std_groups"] == 1.0 else []
            logged = step % run.log_every == 0 or step == run.num_steps
            return Step(state, record if logged else None, postfix)

        outcome = run_steps(
            LoopSettings(
                self.out_dir,
                run.num_steps,
                run.checkpoint_every,
                keep_checkpoints=run.keep_checkpoints,
                async_checkpoints=run.async_checkpoints,
                progress=run.progress,
                desc="grpo",
            ),
            template=template,
            fresh=lambda: {"train": self.step_fn.init(jax.random.key(run.seed), self.init_params)},
            guard=resume_guard(self.fingerprint, where, key="fingerprint"),
            step=train,
            meta=lambda step: {"step": step, "fingerprint": self.fingerprint, "time": time.time()},
            on_restore=restored,
            on_start=lambda: self._started(on_start),
            after_log=lambda step, record: self._check_stall(stalled),
            preemption=self.preemption,
        )
        step, preempted, records = outcome.step, outcome.preempted, outcome.records
        if preempted:
            log.warning("SIGTERM: saved GRPO step %d; rerun the same command to resume", step)
        self.state = outcome.state["train"]
        summary = self._summary(records, step, preempted)
        if not preempted:
            summary["export"] = str(self.export(self.state.params, step, summary))
        if jax.process_index() == 0:
            if records:
                plot_reward_curves(
                    records,
                    self.out_dir / "reward_curves.png",
                    title=f"GRPO {self.prompts.operation} ({self.cfg.name})",
                )
            atomic.write_json(self.out_dir / "summary.json", summary)
        return summary

    def _started(self, on_start: Callable[[], None] | None) -> None:
        self.init_params = None  # the state holds its own copy; do not keep a third one on the device
        if on_start is not None:
            on_start()

    def _check_stall(self, stalled: list[dict]) -> None:
        run = self.run_cfg
        if len(stalled) < run.stall_warn_steps:
            return
        steps = f"steps {stalled[0]['step']}-{stalled[-1]['step']}"
        if run.stall_stop_steps is not None and len(stalled) >= run.stall_stop_steps:
            raise GRPOStalled(
                f"GRPO stopped at step {stalled[-1]['step']}: every prompt group's total reward had zero spread for "
                f"{len(stalled)} steps in a row ({steps}; GRPORunConfig.stall_stop_steps={run.stall_stop_steps}), "
                f"so every advantage was 0 and nothing was learned. Cause: {stall_cause(stalled)}. The last "
                f"checkpoint in {self.out_dir / 'checkpoints'} is kept."
            )
        if len(stalled) == run.stall_warn_steps or len(stalled) % 10 == 0:
            log.warning(
                "GRPO learns nothing: every group's total reward has had zero spread for %d steps in a row (%s): %s",
                len(stalled),
                steps,
                stall_cause(stalled),
            )

    def _summary(self, records: list[dict], step: int, preempted: bool) -> dict:
        def mean_of(key, part):
            vals = [r[key] for r in part if key in r]
            return float(np.mean(vals)) if vals else None

        k = max(1, len(records) // 10)
        rewards = sorted({key for r in records for key in r if key.startswith("reward/") and key.endswith("_mean")})
        return {
            "steps": step,
            "preempted": preempted,
            "operation": self.prompts.operation,
            "prompts": len(self.prompts),
            "out_dir": str(self.out_dir),
            "first_rewards": {key: mean_of(key, records[:k]) for key in rewards},
            "last_rewards": {key: mean_of(key, records[-k:]) for key in rewards},
            "rollout_tokens_per_s": mean_of("rollout_tokens_per_s", records[1:]),
            "update_tokens_per_s": mean_of("update_tokens_per_s", records[1:]),
            "step_time_s": mean_of("time/step_s", records[1:]),
        }

    def export(self, params: Any, step: int, summary: dict | None = None) -> Path:
        """The generator as an HF OLMo-2 directory ``out_dir/export`` (with its vocabulary and a provenance file),
        replaced atomically; only process 0 writes. Every process must call it (the weights are gathered), and
        every process returns once the export is in place: the next stage (synthesis) reads it on every host."""
        out = self._export(params, step, summary)
        distributed.barrier(f"grpo export {out}")
        return out

    def _export(self, params: Any, step: int, summary: dict | None) -> Path:
        out = self.out_dir / EXPORT_DIR
        info_path = out / EXPORT_INFO
        if info_path.exists():
            try:
                old = json.loads(info_path.read_text())
            except (OSError, ValueError):
                old = {}
            if (
                old.get("step") == step
                and old.get("fingerprint") == self.fingerprint
                and old.get("dtype") == self.run_cfg.export_dtype
            ):
                return out  # a finished run restarted: its export is already there
        host = jax.tree.map(sharding.to_host, params)
        if jax.process_index() != 0:
            return out
        info = {
            "step": step,
            "operation": self.prompts.operation,
            "dtype": self.run_cfg.export_dtype,
            "fingerprint": self.fingerprint,
            "summary": summary or {},
        }

        def fill(tmp):
            hf.write_dir(self.cfg, host, tmp, dtype=self.run_cfg.export_dtype)
            for f in self.vocabulary_files:
                src = Path(os.fspath(f))
                if src.suffix == ".model":
                    (tmp / "tokenizer.model").write_bytes(src.read_bytes())
                elif src.is_dir():
                    (tmp / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
                else:
                    (tmp / "tokenizer.json").write_bytes(src.read_bytes())
            (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, default=str))

        replacing = out.exists()
        atomic.publish_dir(out, fill, last=(EXPORT_INFO, "config.json"))
        if replacing:
            log.info("replaced %s with the generator at step %d", out, step)
        return out
