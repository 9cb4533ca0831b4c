"""Policy-gradient losses: GRPO/DAPO/Dr.GRPO, AMPO shaping and KDRL.

docs/methods.md, "Sampled-token estimators" / "GRPO" / "KDRL" / "AMPO" Inputs are aligned per-token log-probs of the
sampled tokens under the current policy `tok_lp_BL` (differentiated), the
rollout policy `old_tok_lp_BL`, a reference or teacher, per-sequence (or
per-token) advantages, and the completion mask.

  ρ   = exp(clip(tok_lp − old_lp, −20, 20))
  pg  = −min(ρA, clip(ρ, 1−ε_lo, 1+ε_hi)·A)                  PPO/GRPO clip
  pg  = where(A < 0, min(pg, −c·A), pg)                      dual clip (c > 1)
  pg  = −A·f(π_θ(y_t)),  f(p) = p/(p+γ)  on off-policy tokens  AMPO/LUFFY
  L   = agg(pg + β_ref·k(ref, tok_lp)) − c_H·agg_H(entropy)
  KDRL: L + β_t·KD,  KD = agg over kept tokens of k(teacher, tok_lp)

Sampled-token KL estimators of KL(π_θ||p) with y ~ π_θ and R = log p − log q:
k1 = −R, k2 = ½R² (gradient = ∇RKL exactly), k3 = exp(R) − R − 1 (gradient =
∇FKL; verl `low_var_kl` clamps R to ±20 and k3 to ±10). KDRL's 'k1' uses R
as a reward: loss −sg(R)·tok_lp, whose gradient in expectation is ∇RKL.

Presets: GRPO paper (ε 0.2, β_ref 0.04, seq-mean-token-mean), TRL (token-
mean), DAPO (ε_lo 0.2, ε_hi 0.28, c 10, token-mean, β_ref 0), Dr.GRPO (no
std in the advantages, seq-mean-token-sum-norm with the generation budget as
max_len), AMPO (`ampo_loss`), KDRL (`kdrl_loss`: k2, β_t = max(5e-3 − 5e-5·t,
1e-3)).

Shape legend: B sequences, L length, G group size.
"""

import jax
import jax.numpy as jnp

from w2s_jax.losses import aggregation

KL_ESTIMATORS = ("k1", "k2", "k3")
KD_MASKING = ("none", "response", "group")


def sampled_kl(
    tok_lp: jax.Array,
    target_tok_lp: jax.Array,
    *,
    estimator: str = "k3",
    clamp: bool = True,
) -> jax.Array:
  """Per-token estimate of KL(π_θ || p) from tokens sampled by π_θ.

  Args:
    tok_lp: [...] log π_θ(y_t) (differentiated).
    target_tok_lp: [...] log p(y_t) of the reference/teacher (stop_gradient).
    estimator: 'k1' (−R), 'k2' (½R²) or 'k3' (e^R − R − 1), R = log p − log q.
    clamp: k3 only: R clipped to [−20, 20] and k3 to [−10, 10] (verl).

  Returns:
    [...] f32 per-token estimates.
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(
        f"estimator must be one of {KL_ESTIMATORS}; got {estimator!r}."
    )
  target = jax.lax.stop_gradient(jnp.asarray(target_tok_lp, jnp.float32))
  r = target - jnp.asarray(tok_lp, jnp.float32)
  if estimator == "k1":
    return -r
  if estimator == "k2":
    return 0.5 * r**2
  if clamp:
    r = jnp.clip(r, -20.0, 20.0)
    return jnp.clip(jnp.exp(r) - r - 1.0, -10.0, 10.0)
  return jnp.exp(r) - r - 1.0


def _broadcast_adv(advantages: jax.Array, mask_shape: tuple[int, ...]):
  a = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
  if a.shape == tuple(mask_shape):
    return a
  if a.shape == tuple(mask_shape[:-1]):
    return a[..., None] * jnp.ones(mask_shape, jnp.float32)
  raise ValueError(
      f"advantages has shape {a.shape}; expected per-sequence"
      f" {tuple(mask_shape[:-1])} or per-token {tuple(mask_shape)}."
  )


def _static_check(name: str, value: object, ok, requirement: str) -> None:
  if aggregation.is_static_number(value) and not ok(float(value)):
    raise ValueError(f"{name} must be {requirement}; got {value}.")


def grpo_loss(
    tok_lp_BL: jax.Array,
    advantages: jax.Array,
    mask_BL: jax.Array,
    *,
    old_tok_lp_BL: jax.Array | None = None,
    ref_tok_lp_BL: jax.Array | None = None,
    beta_ref: float = 0.0,
    kl_estimator: str = "k3",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
    entropy_BL: jax.Array | None = None,
    entropy_coef: float = 0.0,
    entropy_agg: str | None = None,
    entropy_normalizer: jax.Array | float | None = None,
    off_policy_mask: jax.Array | None = None,
    off_policy_gamma: float = 0.1,
    is_weight_BL: jax.Array | None = None,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    prefix: str = "grpo",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped group-relative policy-gradient loss (GRPO and variants).

  Args:
    tok_lp_BL: [B, L] log π_θ of the sampled tokens (differentiated).
    advantages: [B] per-sequence or [B, L] per-token advantages (constants).
    mask_BL: [B, L] completion mask.
    old_tok_lp_BL: log π_old at rollout time; None = sg(tok_lp) (one update
      per rollout, ρ = 1).
    ref_tok_lp_BL: log π_ref for the KL penalty (needed when beta_ref > 0;
      logged when given).
    beta_ref: β_ref ≥ 0 of the KL penalty in the loss (GRPO 0.04; DAPO 0).
    kl_estimator: 'k1', 'k2' or 'k3' (clamped) for the penalty.
    epsilon_low: ε_lo ∈ [0, 1): lower clip 1 − ε_lo.
    epsilon_high: ε_hi ≥ 0: upper clip 1 + ε_hi (None = ε_lo; DAPO 0.28).
    dual_clip: c > 1 caps the loss of A < 0 tokens at −c·A (verl 3, DAPO 10).
    entropy_BL: [B, L] per-token entropy (see `sequence.token_entropy`).
    entropy_coef: weight of the entropy bonus (subtracted from the loss).
    entropy_agg: aggregation of the entropy (None = `agg`; AMPO token-mean).
    entropy_normalizer: step-global normaliser for `entropy_agg`.
    off_policy_mask: [B, L] or [B]: 1 on off-policy (teacher) tokens, which
      use −A·p/(p+γ) instead of the clipped ratio (AMPO/LUFFY prefix).
    off_policy_gamma: γ > 0 of the shaping p/(p+γ).
    is_weight_BL: [B, L] per-token importance weights of the policy term
      (truncated importance sampling, min(π_train/π_sample, C)); constants.
      None = 1.
    agg: aggregation mode of pg + β_ref·KL.
    normalizer: its step-global normaliser; max_len: L_max for sum-norm.
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,pg_loss,clip_frac,clip_frac_low,
    clip_frac_high,ratio_mean,adv_mean,num_tokens,empty_mask}` plus
    `dual_clip_frac`, `kl`, `entropy`, `off_policy_frac` when used.
  """
  _static_check("epsilon_low", epsilon_low, lambda x: 0 <= x < 1, "in [0, 1)")
  eps_hi = epsilon_low if epsilon_high is None else epsilon_high
  _static_check("epsilon_high", eps_hi, lambda x: x >= 0, ">= 0")
  _static_check("beta_ref", beta_ref, lambda x: x >= 0, ">= 0")
  _static_check("off_policy_gamma", off_policy_gamma, lambda x: x > 0, "> 0")
  if dual_clip is not None:
    _static_check("dual_clip", dual_clip, lambda x: x > 1, "> 1 (or None)")
  shape = tuple(jnp.shape(tok_lp_BL))
  m = aggregation.check_mask(mask_BL, shape, "mask_BL", "tok_lp_BL")
  # Masked positions may hold anything (even NaN): zero them before any
  # arithmetic so that neither the value nor the gradient can see them.
  tok_lp = jnp.where(m, jnp.asarray(tok_lp_BL, jnp.float32), 0.0)
  a = jnp.where(m, _broadcast_adv(advantages, shape), 0.0)
  old = tok_lp if old_tok_lp_BL is None else old_tok_lp_BL
  if jnp.shape(old) != shape:
    raise ValueError(
        f"old_tok_lp_BL shape {jnp.shape(old)} must equal tok_lp_BL {shape}."
    )
  old = jax.lax.stop_gradient(jnp.where(m, jnp.asarray(old, jnp.float32), 0.0))
  ratio = jnp.exp(jnp.clip(tok_lp - old, -20.0, 20.0))
  unclipped = -ratio * a
  clipped = -jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + eps_hi) * a
  pg = jnp.maximum(unclipped, clipped)
  metrics = {}
  on = m
  if dual_clip is not None:
    capped = (a < 0) & (pg > -dual_clip * a)
    pg = jnp.where(capped, -dual_clip * a, pg)
  if off_policy_mask is not None:
    off = jnp.asarray(off_policy_mask) != 0
    if off.shape == shape[:-1]:
      off = off[..., None] & jnp.ones(shape, bool)
    off = aggregation.check_mask(off, shape, "off_policy_mask", "tok_lp_BL")
    p = jnp.exp(tok_lp)
    pg = jnp.where(off, -a * p / (p + off_policy_gamma), pg)
    on = m & ~off
    metrics[f"{prefix}/off_policy_frac"] = aggregation.masked_mean(off, m)
    metrics[f"{prefix}/off_policy_prob"] = aggregation.masked_mean(p, m & off)
  if is_weight_BL is not None:
    if jnp.shape(is_weight_BL) != shape:
      raise ValueError(
          f"is_weight_BL shape {jnp.shape(is_weight_BL)} must equal"
          f" tok_lp_BL {shape}."
      )
    iw = jnp.asarray(is_weight_BL, jnp.float32)
    pg = pg * jax.lax.stop_gradient(jnp.where(m, iw, 0.0))
  per_token = pg
  if ref_tok_lp_BL is not None:
    if jnp.shape(ref_tok_lp_BL) != shape:
      raise ValueError(
          f"ref_tok_lp_BL shape {jnp.shape(ref_tok_lp_BL)} must equal"
          f" tok_lp_BL {shape}."
      )
    ref = jnp.where(m, jnp.asarray(ref_tok_lp_BL, jnp.float32), 0.0)
    kl = sampled_kl(tok_lp, ref, estimator=kl_estimator)
    metrics[f"{prefix}/kl"] = aggregation.masked_mean(kl, m)
    if not (aggregation.is_static_number(beta_ref) and beta_ref == 0):
      per_token = pg + beta_ref * kl
  elif not (aggregation.is_static_number(beta_ref) and beta_ref == 0):
    raise ValueError("beta_ref > 0 needs ref_tok_lp_BL (reference log-probs).")
  loss = aggregation.aggregate(per_token, m, agg, normalizer, max_len)
  if entropy_BL is not None:
    if jnp.shape(entropy_BL) != shape:
      raise ValueError(
          f"entropy_BL shape {jnp.shape(entropy_BL)} must equal tok_lp_BL"
          f" {shape}."
      )
    e_agg, e_norm = (
        (agg, normalizer)
        if entropy_agg is None
        else (entropy_agg, entropy_normalizer)
    )
    ent = jnp.where(m, jnp.asarray(entropy_BL, jnp.float32), 0.0)
    ent_value = aggregation.aggregate(ent, m, e_agg, e_norm, max_len)
    loss = loss - entropy_coef * ent_value
    metrics[f"{prefix}/entropy"] = jax.lax.stop_gradient(ent_value)
  elif not (aggregation.is_static_number(entropy_coef) and entropy_coef == 0):
    raise ValueError("entropy_coef != 0 needs entropy_BL (token entropies).")
  high = on & (a > 0) & (ratio > 1.0 + eps_hi)
  low = on & (a < 0) & (ratio < 1.0 - epsilon_low)
  metrics.update({
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      f"{prefix}/pg_loss": jax.lax.stop_gradient(
          aggregation.aggregate(pg, m, agg, normalizer, max_len)
      ),
      f"{prefix}/clip_frac": aggregation.masked_mean(high | low, on),
      f"{prefix}/clip_frac_high": aggregation.masked_mean(high, on),
      f"{prefix}/clip_frac_low": aggregation.masked_mean(low, on),
      f"{prefix}/ratio_mean": aggregation.masked_mean(ratio, on),
      f"{prefix}/adv_mean": aggregation.masked_mean(a, m),
      **aggregation.count_metrics(prefix, m),
  })
  if dual_clip is not None:
    metrics[f"{prefix}/dual_clip_frac"] = aggregation.masked_mean(capped, on)
  return loss, metrics


def ampo_loss(
    tok_lp_BL: jax.Array,
    advantages: jax.Array,
    mask_BL: jax.Array,
    off_policy_mask: jax.Array,
    *,
    old_tok_lp_BL: jax.Array | None = None,
    is_weight_BL: jax.Array | None = None,
    entropy_BL: jax.Array | None = None,
    entropy_coef: float = 0.001,
    gamma: float = 0.1,
    epsilon: float = 0.2,
    dual_clip: float | None = 10.0,
    agg: str = "seq-mean-token-sum-norm",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    entropy_normalizer: jax.Array | float | None = None,
    prefix: str = "ampo",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """AMPO loss (arXiv 2510.02227): GRPO clip on-policy, p/(p+γ) off-policy.

  Σ ℓm / (N·L_max) − 0.001·token_mean(entropy); no KL, no reference. Use
  advantages without std (`group_advantages(..., normalize_std=False)`) over
  the mixed group, and max_len=8192 for the paper's constant normaliser.
  Off-policy gradient: −A·γ/(p+γ)²·∇p (upweights rare teacher tokens).

  Args:
    tok_lp_BL, advantages, mask_BL, old_tok_lp_BL, is_weight_BL: as in
      `grpo_loss`.
    off_policy_mask: [B] or [B, L], 1 on injected teacher tokens.
    entropy_BL: [B, L] token entropies (required when entropy_coef != 0).
    entropy_coef: entropy bonus weight (AMPO 0.001), token-mean.
    gamma: γ of the shaping f(p) = p/(p+γ).
    epsilon: symmetric clip ε (AMPO 0.2/0.2).
    dual_clip: c (AMPO 10).
    agg, normalizer, max_len: aggregation of the policy loss.
    entropy_normalizer: token count of the step for the entropy mean.
    prefix: metric namespace.

  Returns:
    (loss, metrics) as in `grpo_loss`.
  """
  return grpo_loss(
      tok_lp_BL,
      advantages,
      mask_BL,
      old_tok_lp_BL=old_tok_lp_BL,
      epsilon_low=epsilon,
      epsilon_high=epsilon,
      dual_clip=dual_clip,
      entropy_BL=entropy_BL,
      entropy_coef=entropy_coef if entropy_BL is not None else 0.0,
      entropy_agg="token-mean",
      entropy_normalizer=entropy_normalizer,
      off_policy_mask=off_policy_mask,
      off_policy_gamma=gamma,
      is_weight_BL=is_weight_BL,
      agg=agg,
      normalizer=normalizer,
      max_len=max_len,
      prefix=prefix,
  )


def kdrl_beta(
    step: jax.Array | int,
    *,
    beta_init: float,
    beta_min: float,
    decay: float,
) -> jax.Array:
  """KDRL linear annealing β_t = max(β_init − δ·t, β_min); δ = 0: constant.

  The method's defaults (the paper's 5e-3, 1e-3, 5e-5) are
  ``methods.kdrl.KDRLHparams``'s, written once there.
  """
  _static_check("beta_init", beta_init, lambda x: x >= 0, ">= 0")
  _static_check("beta_min", beta_min, lambda x: x >= 0, ">= 0")
  _static_check("decay", decay, lambda x: x >= 0, ">= 0")
  t = jnp.asarray(step, jnp.float32)
  return jnp.maximum(beta_init - decay * t, beta_min)


def kd_token_loss(
    tok_lp: jax.Array, teacher_tok_lp: jax.Array, *, estimator: str = "k2"
) -> jax.Array:
  """KDRL per-token KD term; R = sg(teacher_tok_lp) − tok_lp.

  'k2': ½R² (exact ∇RKL per position); 'k3': clamped e^R − R − 1 (∇FKL);
  'k1': −sg(R)·tok_lp, R as a reward (∇RKL in expectation; its value is not
  a KL: log −R for that).
  """
  if estimator == "k1":
    t = jax.lax.stop_gradient(jnp.asarray(teacher_tok_lp, jnp.float32))
    tok_lp = jnp.asarray(tok_lp, jnp.float32)
    return -jax.lax.stop_gradient(t - tok_lp) * tok_lp
  return sampled_kl(tok_lp, teacher_tok_lp, estimator=estimator)


def kd_keep_mask(
    correct_B: jax.Array | None,
    masking: str,
    group_size: int | None = None,
    batch: int | None = None,
) -> jax.Array:
  """Rows that receive the KD term under reward-guided masking (KDRL).

  'none': all rows; 'response': wrong responses only; 'group': all rows of
  groups with no correct response (rows grouped contiguously, G per group).

  Returns:
    [B] bool.
  """
  if masking not in KD_MASKING:
    raise ValueError(
        f"kd_masking must be one of {KD_MASKING}; got {masking!r}."
    )
  if masking == "none":
    if batch is None:
      raise ValueError("kd_masking='none' needs the batch size.")
    return jnp.ones((batch,), bool)
  if correct_B is None:
    raise ValueError(f"kd_masking={masking!r} needs correct_B (row correct).")
  correct = jnp.asarray(correct_B) != 0
  if masking == "response":
    return ~correct
  b = correct.shape[0]
  if not isinstance(group_size, int) or group_size < 1 or b % group_size:
    raise ValueError(
        f"kd_masking='group' needs group_size dividing B={b} (rows grouped"
        f" contiguously); got {group_size!r}."
    )
  wrong_group = ~jnp.any(correct.reshape(-1, group_size), axis=-1)
  return jnp.repeat(wrong_group, group_size)


def kdrl_loss(
    tok_lp_BL: jax.Array,
    teacher_tok_lp_BL: jax.Array,
    advantages: jax.Array,
    mask_BL: jax.Array,
    *,
    beta: float | jax.Array,
    estimator: str = "k2",
    kd_masking: str = "none",
    correct_B: jax.Array | None = None,
    group_size: int | None = None,
    kd_agg: str = "token-mean",
    kd_normalizer: jax.Array | float | None = None,
    kd_max_len: int | None = None,
    prefix: str = "kdrl",
    **grpo_kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """KDRL: L_GRPO + β_t·KD (arXiv 2506.02208).

  The teacher scores the student's own rollouts (only its log-probs of the
  sampled tokens are needed); KD = Σ kd·mask·keep / Σ mask·keep by default.
  β = 0 gives exactly `grpo_loss`. β depends on the KD normaliser: retune it
  when `kd_agg` changes.

  Args:
    tok_lp_BL: [B, L] student log-probs of its sampled tokens.
    teacher_tok_lp_BL: [B, L] teacher log-probs of the same tokens.
    advantages: [B] or [B, L] GRPO advantages.
    mask_BL: [B, L] completion mask.
    beta: KD weight β_t ≥ 0, a float or a traced scalar (see `kdrl_beta`).
    estimator: 'k2' (paper), 'k3' or 'k1' (reward), see `kd_token_loss`.
    kd_masking: 'none', 'response' or 'group' (reward-guided masking).
    correct_B: [B] bool row correctness (for 'response'/'group').
    group_size: G, rows per group, contiguous (for 'group').
    kd_agg: aggregation of the KD term over kept tokens.
    kd_normalizer: step-global normaliser of the KD term (for 'token-mean':
      Σ mask·keep over the step).
    kd_max_len: L_max for kd_agg='seq-mean-token-sum-norm'.
    prefix: metric namespace of the KD part.
    **grpo_kwargs: `grpo_loss` options (old_tok_lp_BL, epsilon_*, agg, ...).

  Returns:
    (loss, metrics): GRPO metrics plus `<prefix>/{loss,kd,beta,rkl_k1,
    keep_frac,num_tokens,empty_mask}`; kd_* counts are over kept tokens.
  """
  if aggregation.is_static_number(beta) and beta < 0:
    raise ValueError(f"beta must be >= 0; got {beta}.")
  if estimator not in KL_ESTIMATORS:
    raise ValueError(
        f"estimator must be one of {KL_ESTIMATORS}; got {estimator!r}."
    )
  shape = tuple(jnp.shape(tok_lp_BL))
  if jnp.shape(teacher_tok_lp_BL) != shape:
    raise ValueError(
        f"teacher_tok_lp_BL shape {jnp.shape(teacher_tok_lp_BL)} must equal"
        f" tok_lp_BL {shape}."
    )
  pg_loss, metrics = grpo_loss(tok_lp_BL, advantages, mask_BL, **grpo_kwargs)
  m = aggregation.check_mask(mask_BL, shape, "mask_BL", "tok_lp_BL")
  if correct_B is not None and jnp.shape(correct_B) != shape[:1]:
    raise ValueError(
        f"correct_B has shape {jnp.shape(correct_B)}; expected ({shape[0]},)."
    )
  keep = kd_keep_mask(correct_B, kd_masking, group_size, shape[0])
  kd_mask = m & keep[:, None]
  tok_lp = jnp.where(kd_mask, jnp.asarray(tok_lp_BL, jnp.float32), 0.0)
  t_lp = jnp.where(kd_mask, jnp.asarray(teacher_tok_lp_BL, jnp.float32), 0.0)
  kd_tok = kd_token_loss(tok_lp, t_lp, estimator=estimator)
  kd = aggregation.aggregate(kd_tok, kd_mask, kd_agg, kd_normalizer, kd_max_len)
  loss = pg_loss + beta * kd
  r = jax.lax.stop_gradient(t_lp - tok_lp)
  rows = jnp.any(m, axis=-1)
  counts = aggregation.count_metrics(prefix, kd_mask)
  metrics.update({
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      f"{prefix}/kd": jax.lax.stop_gradient(kd),
      f"{prefix}/beta": jnp.asarray(beta, jnp.float32),
      f"{prefix}/rkl_k1": aggregation.masked_mean(-r, kd_mask),
      f"{prefix}/keep_frac": aggregation.masked_mean(keep, rows),
      **counts,
  })
  return loss, metrics
