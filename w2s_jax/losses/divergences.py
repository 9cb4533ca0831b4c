"""Token-level divergences between student and teacher logits (docs/methods.md, "Divergences").

p = softmax(z_T/τ) is the teacher (always under stop_gradient), q =
softmax(z_S/τ) the student; every divergence is per position, summed over V:

  fkl   KL(p||q) = Σ p (log p − log q)   forward, mode-covering (Hinton KD)
  rkl   KL(q||p) = Σ q (log q − log p)   reverse, mode-seeking
  jsd   β KL(p||M) + (1−β) KL(q||M),  M = β p + (1−β) q   (GKD/TRL/Liger β)
        β = 0 is FKL and β = 1 is RKL (explicit branches: the mixture itself
        vanishes at both ends). EasyDeL and KD_generalization use the
        mirrored β; the conventions agree only at β = 0.5.
  skl   KL(p || α p + (1−α) q)           skew KL (DistiLLM, arXiv 2402.03898)
  srkl  KL(q || (1−α) p + α q)           skew reverse KL
  tvd   ½ Σ |p − q|

Temperature τ divides both logits; `tau_sq=True` multiplies the loss by τ²
(Hinton, arXiv 1503.02531; Tunix/MaxText/EasyDeL) and `tau_sq=False` omits it
(TRL/Liger). Logits are promoted to fp32 before the log-softmax, mixtures use
`logaddexp` in log space so the gradient flows through q inside M, and 0·log 0
terms are removed with `where` (so -inf logits, e.g. masked vocabulary
entries, are safe).

Shape legend: B batch, L length, V vocab. Inputs are already aligned:
`student_logits_BLV[b, t]` predicts the token at `targets_BL[b, t]`, and any
leading shape [..., V] with a mask [...] works.
"""

import jax
import jax.numpy as jnp

from w2s_jax.losses import aggregation

DIVERGENCES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")
_DIRECTIONS = {"forward": "fkl", "reverse": "rkl"}


def static_unit(name: str, value: object) -> float:
  """`value` as a float in [0, 1]; it selects branches so must be static."""
  if not aggregation.is_static_number(value):
    raise ValueError(
        f"{name} must be a Python float in [0, 1] (it selects the"
        f" divergence's branch at trace time); got {type(value).__name__}."
    )
  aggregation.check_unit_interval(name, value)
  return float(value)


def check_name(name: str) -> None:
  if name not in DIVERGENCES:
    raise ValueError(
        f"divergence name must be one of {DIVERGENCES}; got {name!r}."
    )


def match_vocab(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    vocab_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Checks shapes and slices both logit tensors to a shared vocabulary.

  Qwen checkpoints pad their logit widths differently (151,936 vs 152,064)
  around the same tokenizer. With `vocab_size` (the tokenizer's size) both
  tensors are sliced to it; without it, differing widths are refused rather
  than silently compared entry by entry.

  Args:
    student_logits: [..., V_s].
    teacher_logits: [..., V_t], same leading shape.
    vocab_size: shared tokenizer vocabulary, <= min(V_s, V_t).

  Returns:
    (student_logits, teacher_logits), both [..., vocab_size or V].
  """
  s_shape, t_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
  if len(s_shape) < 1 or s_shape[:-1] != t_shape[:-1]:
    raise ValueError(
        f"student_logits {tuple(s_shape)} and teacher_logits {tuple(t_shape)}"
        " must share their leading (position) shape [..., V]."
    )
  v_s, v_t = s_shape[-1], t_shape[-1]
  return (
      slice_vocab(student_logits, vocab_size, v_t, "student_logits"),
      slice_vocab(teacher_logits, vocab_size, v_s, "teacher_logits"),
  )


def slice_vocab(
    logits: jax.Array, vocab_size: int | None, other_width: int, name: str
) -> jax.Array:
  """Slices `logits` to `vocab_size`, or checks its width equals `other_width`."""
  width = jnp.shape(logits)[-1]
  if vocab_size is None:
    if width != other_width:
      raise ValueError(
          f"{name} has vocab width {width} but the other model has"
          f" {other_width}; pass vocab_size=<tokenizer vocab size> to slice"
          " both (Qwen pads logit widths, e.g. 151936 vs 152064), after"
          " checking that both models share one tokenizer."
      )
    return logits
  if not isinstance(vocab_size, int) or not 0 < vocab_size <= min(
      width, other_width
  ):
    raise ValueError(
        f"vocab_size must be an int in [1, {min(width, other_width)}] (the"
        f" narrower logit width); got {vocab_size!r}."
    )
  return logits[..., :vocab_size]


def log_softmax_f32(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """fp32 log-softmax over the last axis at temperature τ."""
  z = jnp.asarray(logits).astype(jnp.float32)
  if temperature != 1.0:
    z = z / temperature
  return jax.nn.log_softmax(z, axis=-1)


def kl_from_logprobs(lp_a: jax.Array, lp_b: jax.Array) -> jax.Array:
  """KL(a||b) from log-probs over the last axis; 0·log 0 terms are 0."""
  p_a = jnp.exp(lp_a)
  # Double where: entries with p_a = 0 may hold (-inf) - (-inf) = NaN.
  diff = jnp.where(p_a > 0, lp_a - lp_b, 0.0)
  return jnp.sum(p_a * diff, axis=-1)


def _log_mix(w_a: float, lp_a: jax.Array, lp_b: jax.Array) -> jax.Array:
  """log(w_a·a + (1−w_a)·b) in log space, 0 < w_a < 1."""
  x, y = jnp.log(w_a) + lp_a, jnp.log1p(-w_a) + lp_b
  # logaddexp(-inf, -inf) has a NaN gradient: route such entries (vocab
  # masked in both models) around it.
  both = jnp.isneginf(x) & jnp.isneginf(y)
  safe = jnp.logaddexp(jnp.where(both, 0.0, x), jnp.where(both, 0.0, y))
  return jnp.where(both, -jnp.inf, safe)


def logprob_divergence(
    name: str,
    lp_s: jax.Array,
    lp_t: jax.Array,
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> jax.Array:
  """Per-position divergence from normalised log-probs over the last axis.

  Works on any categorical (the full vocabulary, a renormalised top-k set or
  top-k plus a tail bucket), so the dense, top-k and chunked paths share it.

  Args:
    name: one of DIVERGENCES.
    lp_s: student log-probs [..., V] (gradients flow).
    lp_t: teacher log-probs [..., V] (treated as constants by callers).
    beta: JSD mixture weight on the teacher, in [0, 1].
    alpha: skew weight, in [0, 1].

  Returns:
    [...] f32 divergence per position.
  """
  check_name(name)
  zeros = jnp.zeros(lp_s.shape[:-1], jnp.float32)
  if name == "fkl":
    return kl_from_logprobs(lp_t, lp_s)
  if name == "rkl":
    return kl_from_logprobs(lp_s, lp_t)
  if name == "tvd":
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(lp_t) - jnp.exp(lp_s)), axis=-1)
  if name == "jsd":
    beta = static_unit("beta", beta)
    if beta == 0.0:
      return kl_from_logprobs(lp_t, lp_s)
    if beta == 1.0:
      return kl_from_logprobs(lp_s, lp_t)
    lp_m = _log_mix(beta, lp_t, lp_s)
    return beta * kl_from_logprobs(lp_t, lp_m) + (
        1.0 - beta
    ) * kl_from_logprobs(lp_s, lp_m)
  alpha = static_unit("alpha", alpha)
  if alpha == 1.0:  # The skewed target equals the first argument: KL = 0.
    return zeros
  if name == "skl":
    if alpha == 0.0:
      return kl_from_logprobs(lp_t, lp_s)
    return kl_from_logprobs(lp_t, _log_mix(alpha, lp_t, lp_s))
  # srkl
  if alpha == 0.0:
    return kl_from_logprobs(lp_s, lp_t)
  return kl_from_logprobs(lp_s, _log_mix(alpha, lp_s, lp_t))


def token_divergence(
    name: str,
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    vocab_size: int | None = None,
) -> jax.Array:
  """Per-position divergence at temperature τ (no τ² factor, no mask).

  Args:
    name: one of DIVERGENCES.
    student_logits: [..., V_s] logits of the student (differentiated).
    teacher_logits: [..., V_t] logits of the teacher (stop_gradient here).
    temperature: τ > 0 dividing both logits.
    beta: JSD β (teacher weight of the mixture).
    alpha: skew α for skl/srkl.
    vocab_size: shared vocabulary to slice both widths to.

  Returns:
    [...] f32 per-position divergence.
  """
  check_name(name)
  temperature = aggregation.check_temperature(temperature)
  zs, zt = match_vocab(student_logits, teacher_logits, vocab_size)
  lp_s = log_softmax_f32(zs, temperature)
  lp_t = jax.lax.stop_gradient(log_softmax_f32(zt, temperature))
  return logprob_divergence(name, lp_s, lp_t, beta=beta, alpha=alpha)


def divergence(
    name: str,
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    *,
    temperature: float = 1.0,
    tau_sq: bool = True,
    beta: float = 0.5,
    alpha: float = 0.1,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    vocab_size: int | None = None,
    prefix: str = "distill",
    log_unit_temperature: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked, aggregated divergence loss; the dispatcher the trainer uses.

  Args:
    name: 'fkl', 'rkl', 'jsd', 'skl', 'srkl' or 'tvd' (see module docstring).
    student_logits: [..., V_s] student logits.
    teacher_logits: [..., V_t] teacher logits; receives zero gradient.
    mask: [...] completion mask, 1 where a position counts.
    temperature: τ > 0 applied to both models.
    tau_sq: multiply the loss by τ² (Hinton scaling).
    beta: JSD β ∈ [0, 1], weight of the teacher in M (used by 'jsd').
    alpha: skew α ∈ [0, 1] (used by 'skl' and 'srkl').
    agg: aggregation mode, see `aggregation.AGG_MODES`.
    normalizer: step-global normaliser for exact gradient accumulation.
    max_len: L_max for 'seq-mean-token-sum-norm'.
    vocab_size: tokenizer vocabulary to slice differing widths to.
    prefix: metric namespace.
    log_unit_temperature: when τ != 1, also log the divergence at τ = 1.

  Returns:
    (loss, metrics): f32 scalar and `<prefix>/{loss,<name>,num_tokens,
    empty_mask}` (+ `<prefix>/<name>_t1` when τ != 1). The `<name>` metric is
    the aggregated divergence at τ without the τ² factor.
  """
  check_name(name)
  aggregation.check_unit_interval("beta", beta)
  aggregation.check_unit_interval("alpha", alpha)
  temperature = aggregation.check_temperature(temperature)
  zs, zt = match_vocab(student_logits, teacher_logits, vocab_size)
  m = aggregation.check_mask(mask, zs.shape[:-1], "mask", "logits.shape[:-1]")
  w = aggregation.token_weights(m, agg, normalizer, max_len)
  # Masked positions (prompt, padding) may hold anything, even NaN: replace
  # them before any arithmetic so neither the value nor the gradient sees it.
  zs = jnp.where(m[..., None], zs, 0.0)
  zt = jnp.where(m[..., None], zt, 0.0)
  kw = dict(beta=beta, alpha=alpha)
  d = token_divergence(name, zs, zt, temperature=temperature, **kw)
  value = jnp.sum(jnp.where(m, d, 0.0) * w)
  scale = temperature**2 if tau_sq else 1.0
  loss = scale * value
  metrics = {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      f"{prefix}/{name}": jax.lax.stop_gradient(value),
      **aggregation.count_metrics(prefix, m),
  }
  if log_unit_temperature and temperature != 1.0:
    d1 = jax.lax.stop_gradient(token_divergence(name, zs, zt, **kw))
    metrics[f"{prefix}/{name}_t1"] = jnp.sum(jnp.where(m, d1, 0.0) * w)
  return loss, metrics


def kl_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    direction: str = "forward",
    temperature: float = 1.0,
    tau_sq: bool = True,
    **kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Forward KL(p||q) or reverse KL(q||p), p teacher and q student.

  Args:
    student_logits: [..., V] student logits.
    teacher_logits: [..., V] teacher logits (zero gradient).
    mask: [...] completion mask.
    direction: 'forward' (KL(teacher||student), Hinton KD, mode-covering) or
      'reverse' (KL(student||teacher), mode-seeking).
    temperature: τ > 0.
    tau_sq: multiply by τ².
    **kwargs: `divergence` options (agg, normalizer, vocab_size, prefix, ...).

  Returns:
    (loss, metrics) as in `divergence`, metric key `<prefix>/fkl|rkl`.
  """
  if direction not in _DIRECTIONS:
    raise ValueError(
        f"direction must be 'forward' or 'reverse'; got {direction!r}."
    )
  return divergence(
      _DIRECTIONS[direction],
      student_logits,
      teacher_logits,
      mask,
      temperature=temperature,
      tau_sq=tau_sq,
      **kwargs,
  )


def jsd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    beta: float = 0.5,
    **kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Generalised JSD(β), GKD/TRL convention: M = β·p_teacher + (1−β)·q_student.

  JSD(β) = β·KL(p||M) + (1−β)·KL(q||M); β = 0 is forward KL(p||q) and β = 1 is
  reverse KL(q||p) (exact branches). See `divergence` for the options.
  """
  return divergence(
      "jsd", student_logits, teacher_logits, mask, beta=beta, **kwargs
  )


def skew_kl(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    alpha: float = 0.1,
    **kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Skew KL(p || α·p + (1−α)·q) (DistiLLM); α = 0 is forward KL."""
  return divergence(
      "skl", student_logits, teacher_logits, mask, alpha=alpha, **kwargs
  )


def skew_reverse_kl(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    alpha: float = 0.1,
    **kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Skew reverse KL(q || (1−α)·p + α·q) (DistiLLM); α = 0 is reverse KL."""
  return divergence(
      "srkl", student_logits, teacher_logits, mask, alpha=alpha, **kwargs
  )


def tvd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    **kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total variation distance ½·Σ|p − q|. See `divergence` for the options."""
  return divergence("tvd", student_logits, teacher_logits, mask, **kwargs)
