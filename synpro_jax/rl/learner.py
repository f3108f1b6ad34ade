"""The GRPO learner: per-token log-probs of completions and a sharded, jitted, accumulating update step.

Batch layout (one row per completion, the G completions of a prompt contiguous; the layout of the sampler's
``RolloutBatch``). With P prompt slots and C completion slots, L = P + C:

- ``tokens`` [B, L] int: the left-padded prompt, then the completion (any pad id after it ends);
- ``positions`` [B, L] int: RoPE positions counted from each row's first real prompt token (pads: anything);
- ``segment_ids`` [B, L] int: 1 on prompt and completion tokens, 0 on padding (pads attend to nothing real);
- ``completion_mask`` [B, C] bool/0-1: True on the completion tokens that count (their EOS included);
- ``advantages`` [B] float: one per completion (:func:`synpro_jax.rl.grpo.compute_advantages`);
- ``old_logp`` [B, C] float, optional: log-probs under the policy that sampled (needed when
  ``GRPOConfig.num_iterations`` > 1; absent means on-policy, ratio exp(logp - stop_gradient(logp)) = 1);
- ``ref_logp`` [B, C] float, optional: log-probs under the frozen reference (needed when ``GRPOConfig.beta`` > 0;
  :meth:`GRPOStep.ref_logprobs` computes them).

Completion token j of a row sits at slot P + j and is predicted by the logits at slot P - 1 + j, so C is read off
``completion_mask`` and P = L - C. With ``prompt_group`` G > 1 (:class:`GRPOStep`) each run of G consecutive rows
must share its prompt slots (tokens, positions and segment ids), as a rollout's do: the prompt's slots 0..P-2 then
run through the model once per group and the G rows run only slots P-1..L-2, attending to the shared keys and
values. The log-probs and gradients are those of the unshared pass (to float rounding); the saving is the
prompt's share of the compute times (G - 1) / G. All log-probs are of softmax(logits / temperature) in float32,
as the sampler's are, so the importance ratio compares like with like.

:class:`GRPOStep` is :class:`~synpro_jax.train.step.TrainStep` for GRPO: the same :class:`TrainState`, mesh
shardings (FSDP/TP rules from :mod:`synpro_jax.sharding`), donation and row-interleaved micro-batches. The loss
denominator of the whole batch is computed from all completion masks first; each micro-batch then contributes the
gradient of its loss sum divided by that one denominator, so accumulation (and sharding) reproduce the big batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
import numpy as np
import optax

from synpro_jax import models, sharding
from synpro_jax.models import ModelConfig
from synpro_jax.models.olmo import unembed
from synpro_jax.rl import grpo
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.train.optimizer import OptimizerConfig, make_optimizer, make_schedule
from synpro_jax.train.step import TrainState, init_state, state_shardings

Batch = dict[str, jax.Array]
REQUIRED_KEYS = ("tokens", "positions", "segment_ids", "completion_mask", "advantages")
OPTIONAL_KEYS = ("old_logp", "ref_logp")
LOGPROB_KEYS = ("tokens", "positions", "segment_ids", "completion_mask")

__all__ = ["GRPOStep", "TrainState", "token_logprobs", "check_batch", "grpo_loss_and_grads", "grpo_step"]


def token_logprobs(
    cfg: ModelConfig,
    params: Any,
    tokens: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    completion_mask: jax.Array,
    temperature: float = 1.0,
    logits_chunk: int | None = None,
    prompt_group: int = 1,
) -> jax.Array:
    """log softmax(logits / temperature) of each completion token, float32 [B, C], 0 where the mask is off.

    Only the C hidden states that predict completion tokens go through the output head (the prompt's logits,
    P x V per row, are never formed). With ``logits_chunk`` K (dividing C) the head runs over K completion slots
    at a time under rematerialization, so neither pass holds more than [B, K, V] logits (a 100k vocabulary
    makes [B, C, V] the largest tensor of the step). With ``prompt_group`` G > 1, each G consecutive rows share
    one pass over their prompt (see the module docstring).
    """
    b, length = tokens.shape
    c = completion_mask.shape[-1]
    p = length - c
    if p < 1:
        raise ValueError(
            f"completion_mask has {c} slots but tokens have {length}: need at least one prompt slot "
            "before the completion (the logits at slot P-1 predict completion token 0)"
        )
    if prompt_group > 1 and p > 1:
        if b % prompt_group:
            raise ValueError(f"{b} rows are not whole groups of prompt_group={prompt_group}")

        def first(x):  # each group's prompt, its last slot excepted
            # (a reshape, not x[::G]: on a (2,2,2) mesh inside the accumulation loop, XLA's SPMD partitioner
            # gives the strided slice's embedding gradient to the wrong rows; the mesh test pins this down)
            return x.reshape((b // prompt_group, prompt_group) + x.shape[1:])[:, 0, : p - 1]

        k, v = models.forward(
            cfg, params, first(tokens), positions=first(positions), segment_ids=first(segment_ids), return_kv=True
        )
        prefix = models.PrefixKV(k, v, segment_ids[:, : p - 1], prompt_group)
        rest = lambda x: x[:, p - 1 : length - 1]  # noqa: E731
        hidden = models.forward(
            cfg,
            params,
            rest(tokens),
            positions=rest(positions),
            segment_ids=rest(segment_ids),
            return_hidden=True,
            prefix=prefix,
        )
    else:
        hidden = models.forward(cfg, params, tokens, positions=positions, segment_ids=segment_ids, return_hidden=True)
        hidden = hidden[:, p - 1 : length - 1]
    targets = tokens[:, p:]
    head = models.output_head(cfg, params)

    def chunk_logp(h, t):
        logits = unembed(cfg, head, h) / jnp.float32(temperature)
        logits = sharding.constrain(logits, ("batch", "length", "vocab"))
        return -models.token_nll(logits, t)[0]

    if logits_chunk is None or logits_chunk >= c:
        logp = chunk_logp(hidden, targets)
    else:
        if logits_chunk < 1 or c % logits_chunk:
            raise ValueError(f"GRPOStep.logits_chunk={logits_chunk}: must be >= 1 and divide the {c} completion slots")
        n = c // logits_chunk

        def to_chunks(x):  # [B, C, ...] -> [n, B, K, ...]
            return x.reshape((b, n, logits_chunk) + x.shape[2:]).swapaxes(0, 1)

        out = jax.lax.map(jax.checkpoint(lambda ht: chunk_logp(*ht)), (to_chunks(hidden), to_chunks(targets)))
        logp = out.swapaxes(0, 1).reshape(b, c)
    return jnp.where(completion_mask.astype(bool), logp, 0.0)


def check_batch(batch: dict, grpo_cfg: GRPOConfig | None = None, accum_steps: int = 1, prompt_group: int = 1) -> None:
    """Clear errors for a batch that does not follow the layout in the module docstring. Whether the rows of a
    prompt group share their prompt is checked only on host (NumPy) arrays: device arrays are not fetched."""
    unknown = set(batch) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if unknown or missing:
        raise ValueError(
            f"GRPO batch keys {sorted(batch)}: missing {missing}, unknown {sorted(unknown)}; need "
            f"{REQUIRED_KEYS}, optional {OPTIONAL_KEYS}"
        )
    shape = tuple(batch["tokens"].shape)
    if len(shape) != 2:
        raise ValueError(f"batch['tokens'] has shape {shape}: need [B, L]")
    b, length = shape
    c_shape = tuple(batch["completion_mask"].shape)
    if len(c_shape) != 2 or c_shape[0] != b or not 1 <= c_shape[1] < length:
        raise ValueError(
            f"batch['completion_mask'] has shape {c_shape}: need [B={b}, C] with 1 <= C < L={length} "
            "(the completion slots at the end of each row, after at least one prompt slot)"
        )
    want = {"positions": shape, "segment_ids": shape, "advantages": (b,), "old_logp": c_shape, "ref_logp": c_shape}
    for key, expected in want.items():
        if key in batch and tuple(batch[key].shape) != expected:
            raise ValueError(f"batch[{key!r}] has shape {tuple(batch[key].shape)}: need {expected}")
    if b % accum_steps:
        raise ValueError(f"GRPO batch of {b} rows is not divisible by GRPOStep.accum_steps={accum_steps}")
    if prompt_group > 1:
        if b % prompt_group:
            raise ValueError(f"GRPO batch of {b} rows is not whole groups of GRPOStep.prompt_group={prompt_group}")
        p = length - c_shape[1]
        for key in ("tokens", "positions", "segment_ids"):
            x = batch[key]
            if isinstance(x, np.ndarray):
                groups = x[:, :p].reshape(b // prompt_group, prompt_group, p)
                bad = np.flatnonzero(np.any(groups != groups[:, :1], axis=(1, 2)))
                if bad.size:
                    raise ValueError(
                        f"GRPOStep.prompt_group={prompt_group}: rows {bad[0] * prompt_group}.."
                        f"{(bad[0] + 1) * prompt_group - 1} differ in batch[{key!r}][:, :{p}] (the "
                        "prompt slots); each group of consecutive rows must share one prompt"
                    )
    if grpo_cfg is not None:
        if grpo_cfg.beta > 0 and "ref_logp" not in batch:
            raise ValueError(
                f"GRPOConfig.beta={grpo_cfg.beta}: the KL term needs batch['ref_logp'] "
                "(GRPOStep.ref_logprobs), or set beta=0"
            )
        if grpo_cfg.num_iterations > 1 and "old_logp" not in batch:
            raise ValueError(
                f"GRPOConfig.num_iterations={grpo_cfg.num_iterations}: later iterations need "
                "batch['old_logp'] (the sampling policy's log-probs), else every ratio is 1"
            )


def micro_layout(rows: int, accum_steps: int, prompt_group: int) -> tuple[int, int]:
    """How :func:`_split` deals rows to micro-batches: (unit, group within a micro-batch).

    Units of ``unit`` consecutive rows go round-robin to the A micro-batches, so each device keeps its share of
    each one. Whole prompt groups are dealt when the groups divide evenly; otherwise single rows, and then a
    micro-batch still holds runs of G/A rows of one prompt when A divides G (else no sharing: group 1).
    """
    if accum_steps == 1:
        return 1, prompt_group
    if prompt_group > 1 and (rows // prompt_group) % accum_steps == 0:
        return prompt_group, prompt_group
    return 1, prompt_group // accum_steps if prompt_group % accum_steps == 0 else 1


def _split(x: jax.Array, accum_steps: int, unit: int = 1) -> jax.Array:
    """[B, ...] -> [A, B/A, ...]; unit k of ``unit`` rows goes to micro-batch k % A."""
    b, rest = x.shape[0], x.shape[1:]
    x = x.reshape((b // (accum_steps * unit), accum_steps, unit) + rest).swapaxes(0, 1)
    x = x.reshape((accum_steps, b // accum_steps) + rest)
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))


def _unsplit(x: jax.Array, unit: int = 1) -> jax.Array:
    """Inverse of :func:`_split`."""
    a, m, rest = x.shape[0], x.shape[1], x.shape[2:]
    x = x.reshape((a, m // unit, unit) + rest).swapaxes(0, 1)
    return x.reshape((a * m,) + rest)


def batch_logprobs(
    cfg: ModelConfig,
    params: Any,
    batch: Batch,
    *,
    temperature: float,
    accum_steps: int = 1,
    logits_chunk: int | None = None,
    prompt_group: int = 1,
) -> jax.Array:
    """:func:`token_logprobs` of a batch, in ``accum_steps`` sequential micro-batches (bounds the logits' memory)."""
    unit, group = micro_layout(batch["tokens"].shape[0], accum_steps, prompt_group)

    def one(b):
        return token_logprobs(
            cfg,
            params,
            b["tokens"],
            b["positions"],
            b["segment_ids"],
            b["completion_mask"],
            temperature,
            logits_chunk,
            group,
        )

    sub = {k: batch[k] for k in LOGPROB_KEYS}
    if accum_steps == 1:
        return one(sub)
    return _unsplit(jax.lax.map(one, jax.tree.map(lambda x: _split(x, accum_steps, unit), sub)), unit)


def grpo_loss_and_grads(
    cfg: ModelConfig,
    grpo_cfg: GRPOConfig,
    params: Any,
    batch: Batch,
    *,
    accum_steps: int = 1,
    logits_chunk: int | None = None,
    prompt_group: int = 1,
) -> tuple[dict[str, grpo.Pair], jax.Array, Any]:
    """The batch's GRPO terms as (sum, denominator) pairs, the loss denominator D of the whole batch, and the
    gradient of loss_sum / D, accumulated over ``accum_steps`` micro-batches."""
    denom = grpo.loss_denominator(batch["completion_mask"], grpo_cfg)
    scale = 1.0 / jnp.maximum(denom, 1e-30)  # D == 0 only when every mask is empty: then every sum is 0 too
    unit, group = micro_layout(batch["tokens"].shape[0], accum_steps, prompt_group)

    def objective(p, mb):
        logp = token_logprobs(
            cfg,
            p,
            mb["tokens"],
            mb["positions"],
            mb["segment_ids"],
            mb["completion_mask"],
            grpo_cfg.temperature,
            logits_chunk,
            group,
        )
        terms = grpo.grpo_loss_terms(
            logp, mb.get("old_logp"), mb.get("ref_logp"), mb["advantages"], mb["completion_mask"], grpo_cfg
        )
        return terms["loss"][0] * scale, terms

    grad_fn = jax.grad(objective, has_aux=True)
    if accum_steps == 1:
        grads, terms = grad_fn(params, batch)
        return terms, denom, grads

    micro = jax.tree.map(lambda x: _split(x, accum_steps, unit), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    zero_terms = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(lambda p, b: objective(p, b)[1], params, first)
    )

    def body(carry, mb):
        g_acc, t_acc = carry
        g, t = grad_fn(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, t_acc, t)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, terms), _ = jax.lax.scan(body, (zeros, zero_terms), micro)
    return terms, denom, grads


def grpo_step(
    cfg: ModelConfig,
    grpo_cfg: GRPOConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    state: TrainState,
    batch: Batch,
    *,
    accum_steps: int,
    logits_chunk: int | None = None,
    prompt_group: int = 1,
) -> tuple[TrainState, dict]:
    """One GRPO update: accumulated gradients, then the optimizer (global-norm clip + AdamW) and metrics.

    Metrics (replicated scalars): ``loss``, ``policy_loss`` (aggregated as ``loss_agg_mode``), ``kl`` (token mean;
    only with ref_logp), ``clip_fraction`` (token share where the clipped term is active), ``grad_norm`` (before
    clipping), ``param_norm``, ``learning_rate`` (of this update), ``completion_tokens`` and ``loss_denominator``.
    """
    terms, denom, grads = grpo_loss_and_grads(
        cfg,
        grpo_cfg,
        state.params,
        batch,
        accum_steps=accum_steps,
        logits_chunk=logits_chunk,
        prompt_group=prompt_group,
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = grpo.finalize(terms)
    metrics.update(
        grad_norm=optax.tree.norm(grads),
        param_norm=optax.tree.norm(params),
        learning_rate=schedule(state.step),
        completion_tokens=jnp.sum(batch["completion_mask"].astype(jnp.float32)),
        loss_denominator=denom,
    )
    return TrainState(state.step + 1, params, opt_state), metrics


@dataclasses.dataclass
class GRPOStep:
    """A jitted, sharded GRPO update for one model on one mesh.

    >>> step = GRPOStep(cfg, mesh, GRPOConfig(), total_steps=200, accum_steps=4)
    >>> state = step.init(rng, params)                    # actor params + AdamW state, on the mesh
    >>> ref = step.copy_params(state.params)              # the frozen reference (a copy: the state is donated)
    >>> batch = step.shard_batch(host_batch)              # or device arrays in the layout above
    >>> batch["ref_logp"] = step.ref_logprobs(ref, batch)
    >>> state, metrics = step(state, batch)

    ``opt_cfg`` defaults to ``grpo.optimizer_config(total_steps)`` (the release's AdamW and cosine schedule).
    """

    cfg: ModelConfig
    mesh: Mesh
    grpo: GRPOConfig = GRPOConfig()
    opt_cfg: OptimizerConfig | None = None
    total_steps: int | None = None
    accum_steps: int = 1
    logits_chunk: int | None = None  # completion slots per output-head pass (None: all at once)
    prompt_group: int = 1  # consecutive rows sharing one prompt (a rollout's G): its forward runs once per group
    rules: sharding.Rules = sharding.DEFAULT_RULES
    donate: bool = True

    def __post_init__(self):
        if not isinstance(self.accum_steps, int) or self.accum_steps < 1:
            raise ValueError(f"GRPOStep.accum_steps={self.accum_steps!r}: must be an int >= 1")
        if self.logits_chunk is not None and (not isinstance(self.logits_chunk, int) or self.logits_chunk < 1):
            raise ValueError(f"GRPOStep.logits_chunk={self.logits_chunk!r}: must be an int >= 1, or None")
        if not isinstance(self.prompt_group, int) or self.prompt_group < 1:
            raise ValueError(f"GRPOStep.prompt_group={self.prompt_group!r}: must be an int >= 1")
        if self.opt_cfg is None:
            if self.total_steps is None:
                raise ValueError("GRPOStep: give total_steps (for GRPOConfig.optimizer_config's schedule) or opt_cfg")
            self.opt_cfg = self.grpo.optimizer_config(self.total_steps)
        self.optimizer = make_optimizer(self.opt_cfg)
        self.schedule = make_schedule(self.opt_cfg)
        self.param_shardings = models.param_shardings(self.cfg, self.mesh, self.rules)
        self.state_shardings = self._state_shardings()
        # One spec for every batch leaf: rows over the data axes, the rest whole ([B], [B, C] and [B, L] alike).
        self.batch_sharding: NamedSharding = sharding.batch_sharding(self.mesh, self.rules, ndim=1)
        rep = sharding.replicated(self.mesh)

        def step_fn(state, batch):
            with sharding.use_rules(self.rules):
                return grpo_step(
                    self.cfg,
                    self.grpo,
                    self.optimizer,
                    self.schedule,
                    state,
                    batch,
                    accum_steps=self.accum_steps,
                    logits_chunk=self.logits_chunk,
                    prompt_group=self.prompt_group,
                )

        self._step = jax.jit(
            step_fn,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=(0,) if self.donate else (),
        )

        def grads_fn(params, batch):
            with sharding.use_rules(self.rules):
                terms, denom, grads = grpo_loss_and_grads(
                    self.cfg,
                    self.grpo,
                    params,
                    batch,
                    accum_steps=self.accum_steps,
                    logits_chunk=self.logits_chunk,
                    prompt_group=self.prompt_group,
                )
                return grpo.finalize(terms), grads

        self._loss_and_grads = jax.jit(
            grads_fn,
            in_shardings=(self.param_shardings, self.batch_sharding),
            out_shardings=(rep, self.param_shardings),
        )

        def logprobs_fn(params, batch):
            with sharding.use_rules(self.rules):
                return batch_logprobs(
                    self.cfg,
                    params,
                    batch,
                    temperature=self.grpo.temperature,
                    accum_steps=self.accum_steps,
                    logits_chunk=self.logits_chunk,
                    prompt_group=self.prompt_group,
                )

        # One executable for the reference and the actor (same shapes, same shardings).
        self._logprobs = jax.jit(
            logprobs_fn, in_shardings=(self.param_shardings, self.batch_sharding), out_shardings=self.batch_sharding
        )

    def _state_shardings(self) -> TrainState:
        return state_shardings(self.cfg, self.mesh, self.optimizer, self.param_shardings)

    def lower(self, state: Any, batch: Any):
        """The update lowered for (abstract) inputs, for ahead-of-time compilation (``synpro compile``)."""
        with jax.set_mesh(self.mesh):
            return self._step.lower(state, batch)

    def init(self, rng: jax.Array, params: Any | None = None) -> TrainState:
        """A fresh state (random params, or ``params`` such as the generator's), laid out on the mesh."""
        return init_state(self.cfg, self.optimizer, self.state_shardings, rng, params)

    def copy_params(self, params: Any) -> Any:
        """A separate copy of ``params`` in the step's shardings (e.g. the frozen reference: the actor's buffers
        are donated to each step)."""
        return jax.tree.map(
            lambda x: jnp.array(x, dtype=jnp.float32, copy=True), jax.device_put(params, self.param_shardings)
        )

    def shard_batch(self, batch: dict) -> Batch:
        """Check a host batch (the same on every process) and place it on the mesh, rows over the data axes.
        ``ref_logp`` and ``old_logp`` may be added afterwards (see :meth:`ref_logprobs`)."""
        check_batch(batch, None, self.accum_steps, self.prompt_group)
        return {k: jax.device_put(np.asarray(v), self.batch_sharding) for k, v in batch.items()}

    def place(self, batch: Batch) -> Batch:
        """``batch`` in the step's batch sharding: a no-op for arrays already there; device arrays laid out
        otherwise (say, by the sampler's rules) are resharded on device; host arrays are copied over."""
        return jax.device_put(batch, self.batch_sharding)

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        check_batch(batch, self.grpo, self.accum_steps, self.prompt_group)
        with jax.set_mesh(self.mesh):
            return self._step(state, self.place(batch))

    def loss_and_grads(self, params: Any, batch: Batch) -> tuple[dict, Any]:
        """The finalized GRPO terms and the gradient of the loss, without updating anything."""
        check_batch(batch, self.grpo, self.accum_steps, self.prompt_group)
        with jax.set_mesh(self.mesh):
            return self._loss_and_grads(params, self.place(batch))

    def logprobs(self, params: Any, batch: Batch) -> jax.Array:
        """[B, C] completion log-probs under ``params`` at the config's temperature (0 off the mask): the
        reference's, or the actor's before its first update (``old_logp`` when num_iterations > 1)."""
        check_batch(
            {**{k: batch[k] for k in LOGPROB_KEYS}, "advantages": batch["tokens"][:, 0]},
            None,
            self.accum_steps,
            self.prompt_group,
        )
        with jax.set_mesh(self.mesh):
            return self._logprobs(params, self.place({k: batch[k] for k in LOGPROB_KEYS}))

    def ref_logprobs(self, ref_params: Any, batch: Batch) -> jax.Array:
        """batch['ref_logp'] from the frozen reference params (the same compiled forward as :meth:`logprobs`)."""
        return self.logprobs(ref_params, batch)
