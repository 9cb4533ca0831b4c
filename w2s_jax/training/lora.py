"""Low-rank adapters as a transform of the parameter state.

A small, dependency-free LoRA: adapters live in their own pytree
``{param_path: {"a": [*in_dims, r], "b": [r, *out_dims]}}`` and are merged
into the frozen base weights inside the jitted step,
``W_eff = W + (alpha / r) * a @ b``, so the model code stays untouched and
gradients flow only into the adapters. (qwix would also do this, by
intercepting the einsums of the model; our kernels are plain einsum weights
with known input/output dims, which makes the explicit merge simpler to read,
to test and to export: merge once, then ``save_pretrained``.)

Legend: D d_model, N heads, K kv heads, H head dim, F mlp width, r rank.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# Kernel name -> number of leading input dims (the rest are output dims).
TARGETS = {
    "q_DNH": 1,
    "k_DKH": 1,
    "v_DKH": 1,
    "o_NHD": 2,
    "gate_DF": 1,
    "up_DF": 1,
    "down_FD": 1,
}
DEFAULT_TARGETS = tuple(TARGETS)
# Under ``scan_layers`` kernels carry one more, leading 'layers' axis (L); their
# adapters carry it too ([L, *in_dims, r] and [L, r, *out_dims]): one low-rank
# update per layer. One layer's rank is in the name (q_DNH: 3 dims).


def _layer_axes(name: str, ndim: int) -> int:
  """0 for a per-layer kernel, 1 for a stacked one (``scan_layers``)."""
  per_layer = len(name.rsplit("_", 1)[-1])
  lead = ndim - per_layer
  if lead not in (0, 1):
    raise ValueError(
        f"LoRA kernel {name} has {ndim} dims; expected {per_layer} (one"
        " layer) or one more (stacked layers)."
    )
  return lead


def _flat_params(state: Any) -> dict[tuple[Any, ...], Any]:
  return dict(nnx.to_flat_state(state))


def init_lora(
    state: Any,
    rank: int,
    rng: jax.Array,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    dtype: Any = jnp.float32,
) -> dict[str, dict[str, jax.Array]]:
  """Adapters for every targeted kernel of an nnx parameter state.

  ``a`` is Gaussian with std 1/sqrt(fan_in) and ``b`` is zero, so the adapted
  model starts equal to the base model.
  """
  if rank <= 0:
    raise ValueError(f"LoRA rank must be positive, got {rank}.")
  unknown = set(targets) - set(TARGETS)
  if unknown:
    raise ValueError(
        f"unknown LoRA targets {sorted(unknown)}; choose from"
        f" {sorted(TARGETS)}."
    )
  adapters = {}
  paths = sorted(_flat_params(state).items(), key=lambda kv: str(kv[0]))
  keys = jax.random.split(rng, max(len(paths), 1))
  for key, (path, var) in zip(keys, paths):
    name = path[-1]
    if name not in targets:
      continue
    shape = var.get_value().shape
    lead = _layer_axes(name, len(shape))
    n_in = TARGETS[name]
    layers = shape[:lead]
    in_dims, out_dims = shape[lead : lead + n_in], shape[lead + n_in :]
    fan_in = 1
    for d in in_dims:
      fan_in *= d
    a = jax.random.normal(key, (*layers, *in_dims, rank), dtype)
    a = a / jnp.sqrt(fan_in)
    b = jnp.zeros((*layers, rank, *out_dims), dtype)
    adapters["/".join(map(str, path))] = {"a": a, "b": b}
  if not adapters:
    raise ValueError(f"no parameter matched the LoRA targets {targets}.")
  return adapters


def delta(adapter: dict[str, jax.Array], scale: float) -> jax.Array:
  """``scale * a @ b`` reshaped to the kernel's shape."""
  a, b = adapter["a"], adapter["b"]
  r = a.shape[-1]
  flat = a.reshape(-1, r) @ b.reshape(r, -1)
  return (scale * flat).reshape(*a.shape[:-1], *b.shape[1:])


def merge(state: Any, adapters: dict[str, Any], alpha: float, rank: int) -> Any:
  """The parameter state with ``W + (alpha / rank) * a @ b`` for each adapter."""
  scale = alpha / rank
  flat = _flat_params(state)
  out = []
  for path, var in flat.items():
    name = "/".join(map(str, path))
    if name in adapters:
      w = var.get_value()
      ad = adapters[name]
      if _layer_axes(path[-1], w.ndim):  # stacked: one update per layer
        d = jax.vmap(lambda a, b: delta({"a": a, "b": b}, scale))(
            ad["a"], ad["b"]
        )
      else:
        d = delta(ad, scale)
      w = (w.astype(jnp.float32) + d).astype(w.dtype)
      var = var.replace(w)
    out.append((path, var))
  return nnx.from_flat_state(out)


def num_params(adapters: dict[str, Any]) -> int:
  return sum(x.size for x in jax.tree.leaves(adapters))
