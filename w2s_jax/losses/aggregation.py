"""Masked aggregation of per-token losses (docs/methods.md, "Aggregation") and input checks.

Every loss in `w2s_jax.losses` reduces a per-token loss `loss_BL` with a
completion mask `mask_BL` through one of four modes:

  token-mean               Σ ℓm / Σ m                 TRL GRPO, DAPO, SFT
  seq-mean-token-mean      mean_b(Σ_t ℓm / Σ_t m)     GRPO paper, REDI
  seq-mean-token-sum       mean_b(Σ_t ℓm)
  seq-mean-token-sum-norm  Σ ℓm / (N·L_max)           Dr.GRPO constant norm

N counts the sequences with at least one counted token, so padding rows of a
batch are neutral. Each mode is a weighted sum `Σ w·ℓ` whose weights depend
only on the mask and one normaliser: the total token count, the number of
sequences, or N·L_max. Passing the normaliser of the whole optimizer step
(`normalizer(full_mask, mode)`) to every micro-batch makes the sum of the
micro-batch losses equal the full-batch loss, values and gradients, however
unevenly the step is split.

Shape legend: B batch, L length, V vocab. Masks may have any leading shape
[..., L]; sequence modes read the last axis as the length axis.
"""

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def is_static_number(x: object) -> bool:
  """True for Python/numpy scalars (checkable at trace time), not arrays."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_unit_interval(name: str, value: object) -> None:
  """Raises ValueError unless a static `value` lies in [0, 1].

  Traced values are left alone: validation never inspects device data.
  """
  if is_static_number(value) and not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{name} must lie in [0, 1]; got {value}.")


def check_temperature(temperature: object) -> float:
  """Returns `temperature` as a float, or raises if it is not static and > 0."""
  if not is_static_number(temperature):
    raise ValueError(
        "temperature must be a Python float (it is a static hyperparameter);"
        f" got {type(temperature).__name__}."
    )
  if not float(temperature) > 0.0:
    raise ValueError(f"temperature must be > 0; got {temperature}.")
  return float(temperature)


def check_agg(agg: str) -> None:
  if agg not in AGG_MODES:
    raise ValueError(f"agg must be one of {AGG_MODES}; got {agg!r}.")


def check_mask(
    mask: jax.Array, shape: Sequence[int], name: str = "mask", what: str = ""
) -> jax.Array:
  """Checks `mask.shape == shape` and returns the mask as bool.

  Args:
    mask: completion mask, nonzero where a position counts.
    shape: the expected shape (the per-token shape of the loss).
    name: argument name used in the error message.
    what: what the shape was derived from, for the error message.

  Returns:
    The mask as a bool array.
  """
  mask = jnp.asarray(mask)
  if tuple(mask.shape) != tuple(shape):
    src = f" ({what})" if what else ""
    raise ValueError(
        f"{name} has shape {tuple(mask.shape)} but the per-token shape{src} is"
        f" {tuple(shape)}; pass one mask entry per predicted position (shift"
        " before calling: logits[:, :-1], tokens[:, 1:], completion_mask[:,"
        " 1:])."
    )
  return mask != 0


def _check_seq_axis(mask_BL: jax.Array, agg: str) -> None:
  if agg != "token-mean" and mask_BL.ndim < 2:
    raise ValueError(
        f"agg={agg!r} needs a [..., L] mask with a sequence axis; got shape"
        f" {tuple(mask_BL.shape)}. Use agg='token-mean' for flat tokens."
    )


def _safe_reciprocal(x: jax.Array) -> jax.Array:
  """1/x where x > 0, else 0 (an empty step has a zero loss, not NaN)."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.where(x > 0, 1.0 / jnp.where(x > 0, x, 1.0), 0.0)


def normalizer(
    mask_BL: jax.Array, agg: str, max_len: int | None = None
) -> jax.Array:
  """The global normaliser of `agg` for a full optimizer step's mask.

  Compute it once from the whole step (or sum it over hosts/micro-batches for
  the count modes) and pass it as `normalizer=` to every micro-batch loss.

  Args:
    mask_BL: mask of the whole step, [..., L].
    agg: aggregation mode.
    max_len: L_max for 'seq-mean-token-sum-norm' (defaults to L, the padded
      length of `mask_BL`). Dr.GRPO uses the generation budget here.

  Returns:
    f32 scalar: Σm (token-mean), the number of non-empty sequences
    (seq-mean-*), or that number times L_max (seq-mean-token-sum-norm).
  """
  check_agg(agg)
  m = jnp.asarray(mask_BL) != 0
  _check_seq_axis(m, agg)
  return _normalizer(m, agg, max_len)


def _normalizer(m: jax.Array, agg: str, max_len: int | None) -> jax.Array:
  if agg == "token-mean":
    return jnp.sum(m, dtype=jnp.float32)
  n_seq = jnp.sum(jnp.any(m, axis=-1), dtype=jnp.float32)
  if agg == "seq-mean-token-sum-norm":
    return n_seq * float(m.shape[-1] if max_len is None else max_len)
  return n_seq


def token_weights(
    mask_BL: jax.Array,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
) -> jax.Array:
  """Per-token weights w with `aggregate(ℓ) == Σ w·ℓ` (no gradient through w).

  Args:
    mask_BL: completion mask [..., L]; nonzero = counts.
    agg: one of AGG_MODES.
    normalizer: the step-global normaliser (see `normalizer`); None uses this
      mask's own.
    max_len: L_max for 'seq-mean-token-sum-norm' when `normalizer` is None.

  Returns:
    f32 weights, same shape as the mask, zero wherever the mask is zero.
  """
  check_agg(agg)
  m = jnp.asarray(mask_BL) != 0
  _check_seq_axis(m, agg)
  if normalizer is None:
    normalizer = _normalizer(m, agg, max_len)
  inv = _safe_reciprocal(normalizer)
  mf = m.astype(jnp.float32)
  if agg == "seq-mean-token-mean":
    seq_len = jnp.sum(mf, axis=-1, keepdims=True)
    mf = mf * _safe_reciprocal(seq_len)
  return jax.lax.stop_gradient(mf * inv)


def aggregate(
    loss_BL: jax.Array,
    mask_BL: jax.Array,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
) -> jax.Array:
  """Reduces a per-token loss to a scalar with a mask (docs/methods.md, "Aggregation").

  Masked entries are removed with `where`, so NaN/inf there cannot leak into
  the value.

  Args:
    loss_BL: per-token loss [..., L].
    mask_BL: mask of the same shape; nonzero = counts.
    agg: one of AGG_MODES.
    normalizer: step-global normaliser for exact gradient accumulation;
      None uses this batch's own.
    max_len: L_max for 'seq-mean-token-sum-norm' (default: L).

  Returns:
    f32 scalar; exactly 0 for an all-zero mask.
  """
  m = check_mask(mask_BL, jnp.shape(loss_BL), "mask", "loss")
  w = token_weights(m, agg, normalizer, max_len)
  loss = jnp.where(m, jnp.asarray(loss_BL, jnp.float32), 0.0)
  return jnp.sum(loss * w)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Token mean of `x` over `mask` for logging (0 when empty, no gradient)."""
  m = jnp.asarray(mask) != 0
  x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
  total = jnp.sum(jnp.where(m, x, 0.0))
  return total * _safe_reciprocal(jnp.sum(m, dtype=jnp.float32))


def count_metrics(prefix: str, mask: jax.Array) -> dict[str, jax.Array]:
  """`<prefix>/num_tokens` and the `<prefix>/empty_mask` flag."""
  n = jnp.sum(jnp.asarray(mask) != 0, dtype=jnp.float32)
  return {
      f"{prefix}/num_tokens": n,
      f"{prefix}/empty_mask": (n == 0).astype(jnp.float32),
  }
