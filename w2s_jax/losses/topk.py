"""Divergences against a cached teacher top-k (docs/methods.md, "Divergences", teacher top-k).

An offline teacher cache stores, per position, the ids S of its k most likely
tokens and their log-probs log p[S], recorded at a teacher temperature τ_rec
(engine log-probs depend on it, so it is passed in and checked). Three ways to
compare the student with such a cache:

  renormalized  p̃ = softmax over S of the teacher, q̃ = softmax(z_S[S]/τ); any
                divergence on the k-simplex (Tunix, MaxText). Changing τ is
                exact here: log p̃_τ = log_softmax((τ_rec/τ)·log p_rec[S]).
  tail_bucket   k+1 categories: S plus a "rest" bucket, p_rest = 1 − Σ_S p,
                q_rest = 1 − Σ_S q with q from the full-vocab softmax
                (DistillKit, TRL); log rest = log1mexp(logsumexp(log ·[S]))
                clamped ≥ log 1e-12. By the data-processing inequality its FKL
                lower-bounds the full FKL.
  sparse_fkl    Σ_S p (log p − log q) with full-vocab log q (verl OPD); forward
                KL only, not a divergence of two distributions (can be < 0).

tail_bucket and sparse_fkl need τ == τ_rec: the tail mass at another
temperature is not recoverable from a top-k cache. Cache entries whose
log-prob is not finite (−inf, NaN) are padding and drop out of S on both
sides. Duplicate ids are not detected.

Shape legend: B batch, L length, V vocab, K cached entries per position.
"""

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.losses import aggregation, divergences

TOPK_MODES = ("renormalized", "tail_bucket", "sparse_fkl")

# A finite stand-in for log 0: keeps log_softmax/logsumexp NaN-free even on a
# row whose cache entries are all padding.
_NEG = -1e30
_LOG_TAIL_FLOOR = float(np.log(np.float32(1e-12)))  # no device at import
_LN2 = 0.6931471805599453


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 − exp(x)) for x < 0, accurate at both ends, NaN-free gradients."""
  near = x > -_LN2
  # Each branch gets an input that is safe for it (double-where trick).
  x_near = jnp.where(near, x, -1.0)
  x_far = jnp.where(near, -1.0, x)
  return jnp.where(
      near, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far))
  )


def log_tail(log_mass_S: jax.Array) -> jax.Array:
  """log(1 − exp(log_mass_S)) clamped ≥ log 1e-12 (mass of the rest bucket)."""
  x = jnp.minimum(log_mass_S, jnp.log1p(-1e-12))
  return jnp.maximum(log1mexp(x), _LOG_TAIL_FLOOR)


def check_topk_inputs(
    student_logits: jax.Array,
    teacher_topk_ids: jax.Array,
    teacher_topk_logprobs: jax.Array,
    *,
    mode: str,
    divergence: str,
    temperature: float,
    teacher_temperature: float,
) -> tuple[float, float]:
  """Validates static shapes/options; returns (τ, τ_rec) as floats."""
  if mode not in TOPK_MODES:
    raise ValueError(f"mode must be one of {TOPK_MODES}; got {mode!r}.")
  divergences.check_name(divergence)
  tau = aggregation.check_temperature(temperature)
  if not aggregation.is_static_number(teacher_temperature) or not (
      float(teacher_temperature) > 0
  ):
    raise ValueError(
        "teacher_temperature (the temperature the cache was recorded at) must"
        f" be a Python float > 0; got {teacher_temperature!r}."
    )
  tau_rec = float(teacher_temperature)
  ids_shape = jnp.shape(teacher_topk_ids)
  lp_shape = jnp.shape(teacher_topk_logprobs)
  s_shape = jnp.shape(student_logits)
  if ids_shape != lp_shape:
    raise ValueError(
        f"teacher_topk_ids {tuple(ids_shape)} and teacher_topk_logprobs"
        f" {tuple(lp_shape)} must have the same [..., K] shape."
    )
  if not jnp.issubdtype(jnp.asarray(teacher_topk_ids).dtype, jnp.integer):
    raise ValueError(
        "teacher_topk_ids must be an integer array (token ids); got dtype"
        f" {jnp.asarray(teacher_topk_ids).dtype}."
    )
  if ids_shape[:-1] != s_shape[:-1]:
    raise ValueError(
        f"teacher_topk_ids leading shape {tuple(ids_shape[:-1])} must equal"
        f" student_logits leading shape {tuple(s_shape[:-1])}."
    )
  if ids_shape[-1] > s_shape[-1]:
    raise ValueError(
        f"K={ids_shape[-1]} cached entries exceed the student vocab width"
        f" {s_shape[-1]}."
    )
  if mode != "renormalized" and tau != tau_rec:
    raise ValueError(
        f"mode={mode!r} needs temperature == teacher_temperature (the cache"
        f" was recorded at {tau_rec}; the tail mass at τ={tau} is not"
        " recoverable from a top-k cache). Use mode='renormalized' to change"
        " the temperature."
    )
  if mode == "sparse_fkl" and divergence != "fkl":
    raise ValueError(
        f"mode='sparse_fkl' is a forward KL; got divergence={divergence!r}."
        " Use 'renormalized' or 'tail_bucket' for other divergences."
    )
  return tau, tau_rec


def topk_logprobs(
    student_logits: jax.Array,
    teacher_topk_ids: jax.Array,
    teacher_topk_logprobs: jax.Array,
    *,
    mode: str,
    temperature: float,
    teacher_temperature: float,
) -> tuple[jax.Array, jax.Array]:
  """Student and teacher log-probs on the categories a top-k mode compares.

  Inputs must already be validated (see `check_topk_inputs`).

  Returns:
    (lp_s, lp_t): [..., K] for renormalized and sparse_fkl (sparse: full-vocab
    student log q[S] and the raw cached log p[S]), [..., K+1] for tail_bucket.
    The teacher side is under stop_gradient.
  """
  lp_rec = jax.lax.stop_gradient(
      jnp.asarray(teacher_topk_logprobs, jnp.float32)
  )
  valid = jnp.isfinite(lp_rec)
  lp_rec = jnp.where(valid, lp_rec, _NEG)
  zs = jnp.asarray(student_logits).astype(jnp.float32)
  if mode == "renormalized":
    z_S = jnp.take_along_axis(zs, teacher_topk_ids, axis=-1) / temperature
    lp_s = jax.nn.log_softmax(jnp.where(valid, z_S, _NEG), axis=-1)
    retemper = teacher_temperature / temperature
    lp_t = jax.nn.log_softmax(jnp.where(valid, retemper * lp_rec, _NEG), -1)
    return lp_s, lp_t
  lq = divergences.log_softmax_f32(zs, temperature)
  lq_S = jnp.where(valid, jnp.take_along_axis(lq, teacher_topk_ids, -1), _NEG)
  if mode == "sparse_fkl":
    return lq_S, lp_rec
  lq_rest = log_tail(jax.nn.logsumexp(lq_S, axis=-1))
  lp_rest = log_tail(jax.nn.logsumexp(lp_rec, axis=-1))
  lp_s = jnp.concatenate([lq_S, lq_rest[..., None]], axis=-1)
  lp_t = jnp.concatenate([lp_rec, lp_rest[..., None]], axis=-1)
  return lp_s, lp_t


def topk_token_divergence(
    student_logits: jax.Array,
    teacher_topk_ids: jax.Array,
    teacher_topk_logprobs: jax.Array,
    *,
    mode: str,
    divergence: str = "fkl",
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    vocab_size: int | None = None,
) -> jax.Array:
  """Per-position divergence against a teacher top-k cache (no τ², no mask).

  Args:
    student_logits: [..., V] student logits.
    teacher_topk_ids: [..., K] int32 cached token ids (< vocab_size).
    teacher_topk_logprobs: [..., K] cached teacher log-probs at τ_rec.
    mode: 'renormalized', 'tail_bucket' or 'sparse_fkl'.
    divergence: one of `divergences.DIVERGENCES` ('fkl' for sparse_fkl).
    temperature: τ of the loss.
    teacher_temperature: τ_rec the cache was recorded at.
    beta: JSD β; alpha: skew α.
    vocab_size: slice the student logits to the tokenizer vocabulary.

  Returns:
    [...] f32 per-position divergence.
  """
  if vocab_size is not None:
    student_logits = divergences.slice_vocab(
        student_logits, vocab_size, jnp.shape(student_logits)[-1], "logits"
    )
  tau, tau_rec = check_topk_inputs(
      student_logits,
      teacher_topk_ids,
      teacher_topk_logprobs,
      mode=mode,
      divergence=divergence,
      temperature=temperature,
      teacher_temperature=teacher_temperature,
  )
  lp_s, lp_t = topk_logprobs(
      student_logits,
      teacher_topk_ids,
      teacher_topk_logprobs,
      mode=mode,
      temperature=tau,
      teacher_temperature=tau_rec,
  )
  if mode == "sparse_fkl":
    return divergences.kl_from_logprobs(lp_t, lp_s)
  return divergences.logprob_divergence(
      divergence, lp_s, lp_t, beta=beta, alpha=alpha
  )


def topk_divergence(
    student_logits: jax.Array,
    teacher_topk_ids: jax.Array,
    teacher_topk_logprobs: jax.Array,
    mask: jax.Array,
    *,
    mode: str,
    divergence: str = "fkl",
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    tau_sq: bool = True,
    beta: float = 0.5,
    alpha: float = 0.1,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    vocab_size: int | None = None,
    prefix: str = "distill",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked, aggregated divergence of the student against a top-k cache.

  Args:
    student_logits: [..., V] student logits.
    teacher_topk_ids: [..., K] int32 cached ids.
    teacher_topk_logprobs: [..., K] cached teacher log-probs at τ_rec.
    mask: [...] completion mask.
    mode: 'renormalized', 'tail_bucket' or 'sparse_fkl' (module docstring).
    divergence: divergence name on the compared categories.
    temperature: τ of the loss; must equal τ_rec unless renormalized.
    teacher_temperature: τ_rec the cache was recorded at.
    tau_sq: multiply by τ².
    beta: JSD β; alpha: skew α.
    agg: aggregation mode; normalizer/max_len: see `aggregation`.
    vocab_size: tokenizer vocabulary to slice the student logits to.
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,<divergence>,topk_mass,num_tokens,
    empty_mask}`; topk_mass is the mean cached teacher mass Σ_S p.
  """
  aggregation.check_unit_interval("beta", beta)
  aggregation.check_unit_interval("alpha", alpha)
  m = aggregation.check_mask(
      mask, jnp.shape(student_logits)[:-1], "mask", "logits.shape[:-1]"
  )
  # Masked positions may hold garbage (NaN logits, out-of-range padding ids):
  # neutralise them so no NaN reaches the value or the gradient.
  mk = m[..., None]
  student_logits = jnp.where(mk, student_logits, 0.0)
  ids = jnp.where(mk, teacher_topk_ids, 0).astype(
      jnp.asarray(teacher_topk_ids).dtype
  )
  lps = jnp.where(mk, teacher_topk_logprobs, 0.0)
  d = topk_token_divergence(
      student_logits,
      ids,
      lps,
      mode=mode,
      divergence=divergence,
      temperature=temperature,
      teacher_temperature=teacher_temperature,
      beta=beta,
      alpha=alpha,
      vocab_size=vocab_size,
  )
  w = aggregation.token_weights(m, agg, normalizer, max_len)
  value = jnp.sum(jnp.where(m, d, 0.0) * w)
  loss = (float(temperature) ** 2 if tau_sq else 1.0) * value
  lp = jnp.asarray(lps, jnp.float32)
  mass = jnp.sum(jnp.where(jnp.isfinite(lp), jnp.exp(lp), 0.0), axis=-1)
  return loss, {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      f"{prefix}/{divergence}": jax.lax.stop_gradient(value),
      f"{prefix}/topk_mass": aggregation.masked_mean(mass, m),
      **aggregation.count_metrics(prefix, m),
  }
