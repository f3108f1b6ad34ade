"""Device mesh and logical-axis sharding.

Every array in synpro_jax carries logical axis names (``batch``, ``embed``, ``heads`` ...). One rules table maps
those names to the mesh axes ``data``, ``fsdp`` and ``tensor``. Parameters and activations both go through
:func:`logical_to_spec`, so changing the table re-shards the whole program.

Mesh axis types: since JAX 0.7 ``jax.make_mesh`` defaults to ``AxisType.Explicit`` (sharding becomes part of
the array type and every op must agree on it). synpro_jax builds ``AxisType.Auto`` meshes: the jitted step gets
explicit in/out shardings and activation hints through ``with_sharding_constraint``, and XLA's partitioner
propagates the rest. :func:`make_mesh` always asks for Auto; ``tests/test_sharding.py`` pins that down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
import dataclasses
import logging
import math
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

from synpro_jax.errors import ConfigError

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical name -> mesh axes. A mesh axis is used at most once per array: later names that ask for an axis
# already taken by an earlier dimension get nothing (so activations [batch, length, embed] shard batch over
# data x fsdp and leave embed whole, while the [vocab, embed] table shards embed over fsdp).
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
)

# Sampling keeps whole weights on each data-parallel group: no fsdp gathers inside the decode loop.
SAMPLING_RULES: Rules = tuple((name, None if name == "embed" else axes) for name, axes in DEFAULT_RULES)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Parallelism sizes. -1 on one axis means "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.sizes()
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ValueError(f"MeshConfig.{name}={size}: a parallelism size must be >= 1, or -1 to infer it")
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError(f"MeshConfig {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1 (inferred)")

    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete axis sizes for ``num_devices`` devices; a clear error when they cannot multiply out."""
        sizes = list(self.sizes())
        known = math.prod(s for s in sizes if s != -1)
        as_dict = dict(zip(MESH_AXES, sizes))
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(
                    f"MeshConfig {as_dict}: the fixed sizes multiply to {known}, which does not divide the "
                    f"{num_devices} available devices, so the -1 axis cannot be inferred"
                )
            sizes[sizes.index(-1)] = num_devices // known
        elif known != num_devices:
            raise ConfigError(
                f"MeshConfig {as_dict}: data*fsdp*tensor = {known} but {num_devices} devices are available; "
                "make the product match, or set one axis to -1"
            )
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig | Sequence[int] = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types over ``devices`` (default: all devices)."""
    if not isinstance(config, MeshConfig):
        config = MeshConfig(*config)
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def host_mesh(like: Mesh) -> Mesh:
    """This host's own devices as a mesh of ``like``'s axes (its tensor and fsdp sizes where they fit, the rest
    on data). Bulk inference (synthesis, corpus scoring) runs one replica per host on the host's share of the
    documents: no collective ties the hosts together, so a lost host loses only its own part."""
    local = jax.local_devices()
    tensor = like.shape["tensor"] if len(local) % like.shape["tensor"] == 0 else 1
    # An fsdp axis wider than the host (chosen because the weights need it) shards over all the host's devices.
    fsdp = math.gcd(like.shape["fsdp"], len(local) // tensor)
    return make_mesh(MeshConfig(data=-1, fsdp=fsdp, tensor=tensor), local)


def single_device_mesh(device: Any | None = None) -> Mesh:
    """A (1, 1, 1) mesh: the same code path as a pod, on one device (default: this host's first, so every host
    of a pod runs its own copy of a small program)."""
    return make_mesh(MeshConfig(1, 1, 1), devices=[device or jax.local_devices()[0]])


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(
    names: Sequence[str | None],
    rules: Rules = DEFAULT_RULES,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    on_drop: Callable[[int, str, int], None] | None = None,
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec.

    With ``shape`` and ``mesh`` given, a mesh axis is dropped from a dimension it does not divide (for example
    4 kv heads on an 8-way tensor axis): that dimension is then replicated over it instead of failing to shard,
    and ``on_drop(dim, mesh_axis, shards)`` is told.
    """
    table = dict(rules)
    used: set[str] = set()
    out: list[MeshAxes] = []
    for dim, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known names: {sorted(table)}")
        kept: list[str] = []
        for axis in _as_tuple(table[name]):
            if axis in used:
                continue
            if shape is not None and mesh is not None:
                size = math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]
                if shape[dim] % size:
                    if on_drop is not None and mesh.shape[axis] > 1:
                        on_drop(dim, axis, size)
                    continue
            kept.append(axis)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


_warned: set[tuple] = set()


def tree_shardings(logical_axes: Any, abstract: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a pytree, given a matching pytree of logical-name tuples and of shaped arrays.

    A mesh axis that does not divide a dimension leaves it replicated over that axis; that is logged once per
    parameter, dimension and mesh shape, since it costs memory a config may not have planned for.
    """

    def one(path, names, leaf):
        def warn(dim, axis, shards):
            key = (jax.tree_util.keystr(path), dim, axis, tuple(mesh.shape.items()), leaf.shape)
            if key not in _warned:
                _warned.add(key)
                log.warning(
                    "sharding: %s has shape %s; dimension %d (%s) is not divisible by %d shards, so it is "
                    "replicated over mesh axis %r instead",
                    key[0],
                    tuple(leaf.shape),
                    dim,
                    names[dim],
                    shards,
                    axis,
                )

        return NamedSharding(mesh, logical_to_spec(names, rules, shape=leaf.shape, mesh=mesh, on_drop=warn))

    return jax.tree_util.tree_map_with_path(one, logical_axes, abstract, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding of [batch, length, ...] inputs: batch over the data-parallel axes, the rest replicated."""
    names = ("batch", "length") + (None,) * (ndim - 2)
    return NamedSharding(mesh, logical_to_spec(names[:ndim], rules))


def batch_shards(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the batch dimension is split over ``mesh`` (a global batch must be a multiple of it)."""
    axes = dict(rules).get("batch")
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def to_host(x) -> np.ndarray:
    """A (possibly multi-host, globally sharded) array's whole value on this host: np.asarray alone would see only
    this host's shards on a pod, so those arrays are gathered (every process must call this)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def host_to_global(x, where: NamedSharding) -> jax.Array:
    """A host value that is the same on every process, as one global array laid out as ``where``: each process
    places only its own shards (jit refuses host arrays with a non-trivial sharding on several processes)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return jax.device_put(x, where)
    return jax.make_array_from_callback(x.shape, where, lambda index: x[index])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# Activation hints read the rules from here while a function is traced; see `use_rules`.
_active_rules: list[Rules] = [DEFAULT_RULES]


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
    """Trace model code with another rules table (for example SAMPLING_RULES)."""
    _active_rules.append(rules)
    try:
        yield
    finally:
        _active_rules.pop()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Hint the sharding of an activation. A no-op unless a mesh is set (``jax.set_mesh``) while tracing."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(names, _active_rules[-1], shape=x.shape, mesh=mesh)
    return jax.lax.with_sharding_constraint(x, spec)


def describe(tree_of_shardings: Any) -> dict[str, str]:
    """Flat {path: spec} view, for logs and tests."""
    flat = jax.tree_util.tree_flatten_with_path(tree_of_shardings)[0]
    return {jax.tree_util.keystr(path): str(s.spec) for path, s in flat}


def devices_summary(mesh: Mesh) -> str:
    return " x ".join(f"{n}={s}" for n, s in mesh.shape.items()) + f" ({np.prod(list(mesh.shape.values()))} devices)"
