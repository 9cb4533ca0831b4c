"""Meshes and the one table that maps logical axis names to mesh axes.

Models and losses only ever name *logical* axes ("batch", "embed", "vocab",
...). This module is the single place where those names meet the physical
mesh axes ``data``, ``fsdp`` and ``tensor``:

* ``LOGICAL_AXIS_RULES`` for training (parameters FSDP-sharded on ``fsdp``,
  tensor-parallel dims on ``tensor``, batch on ``data`` x ``fsdp``);
* ``SAMPLING_RULES`` for decoding (no FSDP: weights are gathered once instead
  of every decode step).

``shard(x, *names)`` pins an activation with a sharding constraint when a mesh
is active (``jax.set_mesh``) and is the identity otherwise, so the same model
code runs on one CPU device and on a pod slice. A mesh axis that does not
divide the dimension it would shard is dropped for that dimension (GQA with 2
KV heads on a 4-way tensor axis stays replicated) rather than failing.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical name -> mesh axes. Parameter names and activation names differ where
# their sharding differs ("embed" is FSDP-sharded in weights, "act_embed" is
# replicated in activations).
LOGICAL_AXIS_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("cache_length", None),
    ("layers", None),  # the stacked axis of scan_layers models
)

# Decoding: weights are not FSDP-sharded (each step would all-gather them).
SAMPLING_RULES: Rules = tuple(
    (name, None) if name == "embed" else (name, axes)
    for name, axes in LOGICAL_AXIS_RULES
)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar(
    "w2s_jax_sharding_rules", default=LOGICAL_AXIS_RULES
)


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[None]:
  """Temporarily switches the logical->mesh table (e.g. to SAMPLING_RULES)."""
  token = _RULES.set(rules)
  try:
    yield
  finally:
    _RULES.reset(token)


def current_rules() -> Rules:
  return _RULES.get()


def make_mesh(
    shape: Sequence[int] | dict[str, int] = (-1, 1, 1),
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh; one entry may be -1 (fill).

  Args:
    shape: sizes of (data, fsdp, tensor), or a dict with those keys (missing
      keys are 1).
    devices: devices to use; defaults to all of ``jax.devices()``.

  Returns:
    A mesh with ``AxisType.Auto`` axes (GSPMD propagation between the
    constraints the model sets).
  """
  if isinstance(shape, dict):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(
          f"mesh shape has unknown axes {sorted(unknown)}; valid axes are"
          f" {MESH_AXES}."
      )
    shape = tuple(int(shape.get(a, 1)) for a in MESH_AXES)
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(
        f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes"
        f" {MESH_AXES}."
    )
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  for axis, size in zip(MESH_AXES, shape):
    if size == 0 or size < -1:
      raise ValueError(
          f"mesh shape {shape}: axis {axis!r} has size {size}; sizes must be"
          " positive, or -1 for the one axis that takes the remaining"
          " devices."
      )
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1.")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or n % known:
      raise ValueError(
          f"mesh shape {shape} cannot fill {n} devices: {n} is not divisible"
          f" by {known}."
      )
    shape = tuple(n // known if s == -1 else s for s in shape)
  if any(s <= 0 for s in shape) or math.prod(shape) != n:
    raise ValueError(
        f"mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)}"
        f" devices but {n} are available; set the sizes so their product is"
        f" {n}, or use -1 for one axis."
    )
  dev_array = np.asarray(devices).reshape(shape)
  return Mesh(dev_array, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _mesh_axis_sizes(mesh: Any) -> dict[str, int]:
  return dict(mesh.shape) if mesh.axis_names else {}


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Any | None = None,
    rules: Rules | None = None,
) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec for ``mesh``.

  Mesh axes absent from the mesh, of size 1, already used by an earlier
  dimension, or (when ``shape`` is given) not dividing the dimension are
  dropped, so the result is always a valid sharding.
  """
  rules = dict(current_rules() if rules is None else rules)
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  sizes = _mesh_axis_sizes(mesh)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise KeyError(
          f"logical axis {name!r} has no rule; add it to"
          " sharding.LOGICAL_AXIS_RULES."
      )
    axes = rules[name]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = []
    dim = None if shape is None else int(shape[i])
    for ax in axes:
      size = sizes.get(ax, 1)
      if size == 1 or ax in used:
        continue
      if dim is not None and dim % (size * math.prod(sizes[a] for a in kept)):
        continue
      kept.append(ax)
    used.update(kept)
    spec.append(
        None if not kept else kept[0] if len(kept) == 1 else tuple(kept)
    )
  return PartitionSpec(*spec)


def shard(x: jax.Array, *names: str | None) -> jax.Array:
  """Pins ``x`` to the sharding of its logical axes; identity without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.axis_names:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"shard(): {len(names)} names for a rank-{x.ndim} array.")
  spec = logical_to_spec(names, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def logical_names(state: Any) -> Any:
  """The logical axis names of every parameter in an nnx State (a pytree)."""

  def names(v):
    meta = v.get_metadata()
    out = meta.get("out_sharding")
    return tuple(out) if out is not None else (None,) * np.ndim(v.get_value())

  return jax.tree.map(names, state, is_leaf=_is_variable)


def dropped_axes(
    state: Any, mesh: Mesh, rules: Rules | None = None
) -> list[str]:
  """Parameters whose dimensions a mesh axis does not divide.

  Such a dimension is replicated instead of sharded (see ``logical_to_spec``):
  correct, but it costs memory. One line per parameter and dimension, e.g.
  ``['blocks'][0]['attn']['k_DKH'] dim 1 (size 2): tensor=4 dropped``, for a
  start-up log or a strict check.
  """
  rules = current_rules() if rules is None else rules
  sizes = _mesh_axis_sizes(mesh)
  flat, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)
  out = []
  for path, v in flat:
    shape = np.shape(v.get_value())
    names = v.get_metadata().get("out_sharding") or (None,) * len(shape)
    wanted = logical_to_spec(names, None, mesh, rules)
    got = logical_to_spec(names, shape, mesh, rules)
    for i, (dim, w, g) in enumerate(zip(shape, wanted, got)):
      w = (w,) if isinstance(w, str) else tuple(w or ())
      g = (g,) if isinstance(g, str) else tuple(g or ())
      lost = [f"{a}={sizes[a]}" for a in w if a not in g]
      if lost:
        out.append(
            f"{jax.tree_util.keystr(path)} dim {i} (size {dim}):"
            f" {', '.join(lost)} dropped"
        )
  return out


def state_shardings(
    state: Any, mesh: Mesh, rules: Rules | None = None, strict: bool = False
) -> Any:
  """NamedShardings for every parameter of ``state`` on ``mesh``.

  Args:
    state: an nnx State (concrete or abstract).
    mesh: the device mesh.
    rules: the logical->mesh table; defaults to the active one.
    strict: raise (naming the parameter) when a mesh axis does not divide the
      dimension it is meant to shard, instead of replicating that dimension.

  Raises:
    ValueError: with ``strict``, for the first parameter a mesh axis does not
      divide.
  """
  rules = current_rules() if rules is None else rules
  sizes = _mesh_axis_sizes(mesh)
  flat, treedef = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=_is_variable
  )
  out = []
  for path, v in flat:
    meta = v.get_metadata()
    value = v.get_value()
    shape = np.shape(value)
    names = meta.get("out_sharding") or (None,) * len(shape)
    if strict:
      full = logical_to_spec(names, None, mesh, rules)
      for dim, axes in zip(shape, full):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(sizes.get(a, 1) for a in axes)
        if dim % size:
          pname = jax.tree_util.keystr(path)
          raise ValueError(
              f"parameter {pname} of shape {shape}: mesh axes {axes} of total"
              f" size {size} do not divide dimension {dim}; choose a mesh"
              " whose axis sizes divide the model dimensions."
          )
    spec = logical_to_spec(names, shape, mesh, rules)
    out.append(v.replace(NamedSharding(mesh, spec)))
  return jax.tree_util.tree_unflatten(treedef, out)
