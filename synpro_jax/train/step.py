"""The sharded next-token training step: loss, gradients (optionally accumulated), AdamW update.

Everything is a pure function of (state, batch). :class:`TrainStep` jits it once with explicit in/out shardings
for a mesh (pjit style), donating the old state, so the same object runs on one CPU or a TPU pod slice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
import numpy as np
import optax

from synpro_jax import models, sharding
from synpro_jax.models import LossSums, ModelConfig
from synpro_jax.train.optimizer import OptimizerConfig, make_optimizer, make_schedule

Batch = dict[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")
# What the summed loss is divided by before the gradient: "loss_tokens", the unmasked targets (a mean over the
# tokens trained on; pretraining's), or "batch_tokens", every input position of the global batch, masked or
# not (OLMo's trainer, which the release's probe runs: the summed label-masked loss over batch_size_in_tokens).
LOSS_NORMALIZATIONS = ("loss_tokens", "batch_tokens")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def next_token_batch(tokens: np.ndarray | jax.Array, loss_mask=None) -> Batch:
    """[B, T+1] token rows -> inputs/targets [B, T] (and the mask aligned to the targets)."""
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    if loss_mask is not None:
        batch["loss_mask"] = loss_mask[:, 1:]
    return batch


def check_batch(batch: Batch) -> None:
    unknown = set(batch) - set(BATCH_KEYS)
    if unknown or "inputs" not in batch or "targets" not in batch:
        raise ValueError(
            f"batch keys {sorted(batch)}: need 'inputs' and 'targets'; optional {BATCH_KEYS[2:]}; "
            f"unknown {sorted(unknown)}"
        )
    shape = batch["inputs"].shape
    for k, v in batch.items():
        if v.shape != shape:
            raise ValueError(f"batch[{k!r}] has shape {v.shape}, but batch['inputs'] has {shape}")


def batch_loss_sums(cfg: ModelConfig, params: Any, batch: Batch) -> LossSums:
    return models.forward_loss_sums(
        cfg,
        params,
        batch["inputs"],
        batch["targets"],
        batch.get("loss_mask"),
        positions=batch.get("positions"),
        segment_ids=batch.get("segment_ids"),
    )


def check_loss_normalization(normalization: str, where: str = "TrainStep.loss_normalization") -> None:
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"{where}={normalization!r}: must be one of {LOSS_NORMALIZATIONS}")


def loss_denominator(sums: LossSums, batch: Batch, normalization: str = "loss_tokens") -> jax.Array:
    """What the summed loss ``sums`` of ``batch`` is divided by (see :data:`LOSS_NORMALIZATIONS`):
    the unmasked target count (at least 1), or every position of ``batch["inputs"]`` (padding included, as
    OLMo's ``input_ids.numel()``). Shapes are global under jit, so this is the whole batch on every device."""
    check_loss_normalization(normalization, "loss_normalization")
    if normalization == "batch_tokens":
        return jnp.float32(np.prod(batch["inputs"].shape))
    return jnp.maximum(sums.tokens, 1.0)


def loss_and_grads(
    cfg: ModelConfig,
    params: Any,
    batch: Batch,
    *,
    z_loss: float = 0.0,
    accum_steps: int = 1,
    normalization: str = "loss_tokens",
) -> tuple[LossSums, Any]:
    """Summed losses and the gradient of (cross-entropy + z-loss) summed over the unmasked tokens and divided by
    :func:`loss_denominator`: by default their count (a mean), with ``normalization="batch_tokens"`` every
    input position of the batch.

    With ``accum_steps`` > 1 the batch is split into micro-batches scanned one after another; sums (not means)
    are accumulated and divided once, so the result equals the single-pass one up to float rounding.
    """

    def objective(p, b):
        sums = batch_loss_sums(cfg, p, b)
        return sums.nll + z_loss * sums.z, sums

    grad_fn = jax.grad(objective, has_aux=True)
    if accum_steps == 1:
        grads, sums = grad_fn(params, batch)
    else:
        b = batch["inputs"].shape[0]
        if b % accum_steps:
            raise ValueError(f"batch size {b} is not divisible by accum_steps={accum_steps}")

        def split(x):  # row i goes to micro-batch i % A, so each device keeps its share of every micro-batch
            x = x.reshape((b // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1)
            return sharding.constrain(x, (None, "batch", "length"))

        micro = jax.tree.map(split, batch)

        def body(carry, mb):
            g_acc, s_acc = carry
            g, s = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        zero_sums = LossSums(jnp.float32(0), jnp.float32(0), jnp.float32(0))
        (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), micro)
    denom = loss_denominator(sums, batch, normalization)
    return sums, jax.tree.map(lambda g: g / denom, grads)


def train_step(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    state: TrainState,
    batch: Batch,
    *,
    z_loss: float,
    accum_steps: int,
    normalization: str = "loss_tokens",
) -> tuple[TrainState, dict]:
    """One update. ``loss`` and ``z_loss`` are means over the unmasked tokens whatever the normalization;
    ``total_loss`` is the objective the gradient is taken of (divided by :func:`loss_denominator`)."""
    sums, grads = loss_and_grads(
        cfg, state.params, batch, z_loss=z_loss, accum_steps=accum_steps, normalization=normalization
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    denom = jnp.maximum(sums.tokens, 1.0)
    metrics = {
        "loss": sums.nll / denom,
        "z_loss": sums.z / denom,
        "total_loss": (sums.nll + z_loss * sums.z) / loss_denominator(sums, batch, normalization),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "learning_rate": schedule(state.step),
        "tokens": sums.tokens,
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def state_shardings(cfg: ModelConfig, mesh, optimizer, param_shardings) -> TrainState:
    """Where a (params, AdamW state) TrainState lives: moments follow their params, counts are replicated."""
    abstract_opt = jax.eval_shape(optimizer.init, models.abstract_params(cfg))
    rep = sharding.replicated(mesh)
    opt = optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: rep
    )
    return TrainState(step=rep, params=param_shardings, opt_state=opt)


def init_state(
    cfg: ModelConfig, optimizer, shardings: TrainState, rng: jax.Array, params: Any | None = None
) -> TrainState:
    """A fresh state (random params, or float32 copies of ``params``), created directly in its shards."""

    def make(r, p):
        p = models.random_params(cfg, r) if p is None else p
        p = jax.tree.map(lambda x: x.astype(jnp.float32), p)
        return TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p))

    if params is None:
        return jax.jit(lambda r: make(r, None), out_shardings=shardings)(rng)
    params = jax.device_put(params, shardings.params)
    return jax.jit(make, out_shardings=shardings)(rng, params)


@dataclasses.dataclass
class TrainStep:
    """A jitted, sharded train step for one model on one mesh.

    >>> step = TrainStep(cfg, mesh, OptimizerConfig(learning_rate=1e-3, warmup_steps=10))
    >>> state = step.init(jax.random.key(0))
    >>> state, metrics = step(state, step.shard_batch(batch))
    """

    cfg: ModelConfig
    mesh: Mesh
    opt_cfg: OptimizerConfig = OptimizerConfig()
    z_loss: float = 0.0
    accum_steps: int = 1
    rules: sharding.Rules = sharding.DEFAULT_RULES
    donate: bool = True
    loss_normalization: str = "loss_tokens"  # see LOSS_NORMALIZATIONS; the probe sets "batch_tokens"

    def __post_init__(self):
        if self.accum_steps < 1:
            raise ValueError(f"TrainStep.accum_steps={self.accum_steps}: must be >= 1")
        if self.z_loss < 0:
            raise ValueError(f"TrainStep.z_loss={self.z_loss}: must be >= 0")
        check_loss_normalization(self.loss_normalization)
        self.optimizer = make_optimizer(self.opt_cfg)
        self.schedule = make_schedule(self.opt_cfg)
        self.param_shardings = models.param_shardings(self.cfg, self.mesh, self.rules)
        self.state_shardings = self._state_shardings()
        self.batch_sharding: NamedSharding = sharding.batch_sharding(self.mesh, self.rules)
        self._metrics_sharding = sharding.replicated(self.mesh)

        def step_fn(state, batch):
            with sharding.use_rules(self.rules):
                return train_step(
                    self.cfg,
                    self.optimizer,
                    self.schedule,
                    state,
                    batch,
                    z_loss=self.z_loss,
                    accum_steps=self.accum_steps,
                    normalization=self.loss_normalization,
                )

        self._step = jax.jit(
            step_fn,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, self._metrics_sharding),
            donate_argnums=(0,) if self.donate else (),
        )

        def loss_grad_fn(params, batch):
            with sharding.use_rules(self.rules):
                return loss_and_grads(
                    self.cfg,
                    params,
                    batch,
                    z_loss=self.z_loss,
                    accum_steps=self.accum_steps,
                    normalization=self.loss_normalization,
                )

        self._loss_and_grads = jax.jit(
            loss_grad_fn,
            in_shardings=(self.param_shardings, self.batch_sharding),
            out_shardings=(self._metrics_sharding, self.param_shardings),
        )

    def _state_shardings(self) -> TrainState:
        return state_shardings(self.cfg, self.mesh, self.optimizer, self.param_shardings)

    def init(self, rng: jax.Array, params: Any | None = None) -> TrainState:
        """A fresh state (random params, or ``params`` such as an imported checkpoint), laid out on the mesh."""
        return init_state(self.cfg, self.optimizer, self.state_shardings, rng, params)

    def continue_from(self, state: TrainState, adam, step: int) -> TrainState:
        """``state`` (fresh, holding the params to continue) with another run's Adam moments and count and its
        training step, so AdamW and the schedule go on where that run stopped. ``adam`` is an
        :class:`~synpro_jax.train.checkpoint.AdamMoments`; None keeps zero moments at count 0 (so the optimizer's
        own schedule also starts at 0) and only sets ``state.step``: what the probe wants for an HF theta."""
        if adam is None:
            return state.replace(step=jnp.asarray(step, jnp.int32))
        for name, tree in (("mu", adam.mu), ("nu", adam.nu)):
            if jax.tree.structure(tree) != jax.tree.structure(state.params):
                raise ValueError(f"the checkpoint's Adam {name} is not shaped like the model's params")

        def resume(st, mu, nu, count):
            opt = optax.tree_utils.tree_set(st.opt_state, mu=mu, nu=nu, count=jnp.asarray(count, jnp.int32))
            return st.replace(step=jnp.asarray(step, jnp.int32), opt_state=opt)

        moments = (self.param_shardings, self.param_shardings, sharding.replicated(self.mesh))
        with jax.set_mesh(self.mesh):  # jit outputs are new buffers: the caller's moments survive later donation
            return jax.jit(resume, in_shardings=(self.state_shardings,) + moments, out_shardings=self.state_shardings)(
                state, adam.mu, adam.nu, adam.count
            )

    def shard_batch(self, batch: dict) -> Batch:
        """Place a host batch (the same on every process) on the mesh, batch over the data axes."""
        check_batch(batch)
        return {k: jax.device_put(np.asarray(v), self.batch_sharding) for k, v in batch.items()}

    def lower(self, state: Any, batch: Any):
        """The step lowered for (abstract) inputs, for ahead-of-time compilation (``synpro compile``)."""
        with jax.set_mesh(self.mesh):
            return self._step.lower(state, batch)

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        with jax.set_mesh(self.mesh):
            return self._step(state, batch)

    def loss_and_grads(self, params: Any, batch: Batch) -> tuple[LossSums, Any]:
        """The step's loss sums and its gradient (of the sum over the step's denominator), without updating
        anything (for tests and probes)."""
        with jax.set_mesh(self.mesh):
            return self._loss_and_grads(params, batch)
