"""Sequence objectives: completion-only SFT, REDI, DPO and SimPO.

docs/methods.md, "SFT" (SFT) and docs/methods.md, "REDI, DPO, SimPO" (REDI and its preference baselines). Inputs are
aligned token log-probs `tok_lp_BL = log π(targets_BL | prefix)` (see
`token_logprobs`) with completion masks that include EOS/end-of-turn and
exclude prompt and padding. With s = length-normalised and ℓ = summed
sequence log-prob of a completion:

  SFT    −Σ m·tok_lp / Σ m                        (token-mean over the step)
  REDI   mean_pairs(−s_w + α·s_l)                 arXiv 2505.24850, α = 0.8;
         reference-free, no sigmoid; α = 1 is "symmetric REDI"
  DPO    −log σ(β[(ℓ_w − ℓ_w^ref) − (ℓ_l − ℓ_l^ref)])   arXiv 2305.18290
  SimPO  −log σ(β(s_w − s_l) − γ)                 arXiv 2405.14734

Pairwise losses average over the pairs whose two completions both have
counted tokens (padding rows and half-empty pairs are neutral); pass
`normalizer=` (the step's number of such pairs) to make micro-batch sums
exact.

Shape legend: B batch (pairs), L length, V vocab.
"""

import jax
import jax.numpy as jnp

from w2s_jax.losses import aggregation, divergences


def token_logprobs(
    logits_BLV: jax.Array,
    targets_BL: jax.Array,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> jax.Array:
  """log softmax(logits/τ)[target] in fp32 (docs/methods.md, "Notation" `tok_lp`).

  Args:
    logits_BLV: [..., V] logits already aligned with the targets.
    targets_BL: [...] int target ids.
    temperature: τ > 0 (sampling temperature for RL importance ratios).
    vocab_size: slice padded logit widths to the tokenizer vocabulary.

  Returns:
    [...] f32 log-probs of the targets.
  """
  tau = aggregation.check_temperature(temperature)
  if tuple(jnp.shape(targets_BL)) != tuple(jnp.shape(logits_BLV)[:-1]):
    raise ValueError(
        f"targets_BL shape {tuple(jnp.shape(targets_BL))} must equal"
        f" logits_BLV.shape[:-1] {tuple(jnp.shape(logits_BLV)[:-1])}; shift"
        " first (logits[:, :-1], tokens[:, 1:])."
    )
  if vocab_size is not None:
    width = jnp.shape(logits_BLV)[-1]
    logits_BLV = divergences.slice_vocab(
        logits_BLV, vocab_size, width, "logits"
    )
  lp = divergences.log_softmax_f32(logits_BLV, tau)
  return jnp.take_along_axis(lp, targets_BL[..., None], axis=-1)[..., 0]


def token_entropy(
    logits_BLV: jax.Array,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> jax.Array:
  """Entropy −Σ q log q of softmax(logits/τ) per position, fp32."""
  tau = aggregation.check_temperature(temperature)
  if vocab_size is not None:
    width = jnp.shape(logits_BLV)[-1]
    logits_BLV = divergences.slice_vocab(
        logits_BLV, vocab_size, width, "logits"
    )
  lp = divergences.log_softmax_f32(logits_BLV, tau)
  p = jnp.exp(lp)
  return -jnp.sum(jnp.where(p > 0, p * lp, 0.0), axis=-1)


def sequence_logprob(
    tok_lp_BL: jax.Array, mask_BL: jax.Array, *, average: bool = False
) -> jax.Array:
  """Per-sequence Σ_t m·tok_lp (average=False) or that over max(Σ_t m, 1)."""
  m = aggregation.check_mask(mask_BL, jnp.shape(tok_lp_BL), "mask_BL", "tok_lp")
  total = jnp.sum(jnp.where(m, jnp.asarray(tok_lp_BL, jnp.float32), 0.0), -1)
  if not average:
    return total
  return total / jnp.maximum(jnp.sum(m, axis=-1, dtype=jnp.float32), 1.0)


def sft_cross_entropy(
    logits_BLV: jax.Array,
    targets_BL: jax.Array,
    mask_BL: jax.Array,
    *,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    vocab_size: int | None = None,
    prefix: str = "sft",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Completion-only cross-entropy (docs/methods.md, "SFT").

  Args:
    logits_BLV: [..., V] aligned logits (logits[:, :-1]).
    targets_BL: [...] targets (tokens[:, 1:]).
    mask_BL: [...] completion mask (completion_mask[:, 1:]); must include
      the EOS/end-of-turn target, else the model never learns to stop.
    agg: aggregation mode ('token-mean' over the step is the SFT default).
    normalizer: step-global normaliser for exact gradient accumulation.
    max_len: L_max for 'seq-mean-token-sum-norm'.
    vocab_size: slice padded logit widths.
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,accuracy,num_tokens,empty_mask}`.
  """
  m = aggregation.check_mask(
      mask_BL, jnp.shape(logits_BLV)[:-1], "mask_BL", "logits.shape[:-1]"
  )
  if vocab_size is not None:
    width = jnp.shape(logits_BLV)[-1]
    logits_BLV = divergences.slice_vocab(
        logits_BLV, vocab_size, width, "logits"
    )
  # Masked positions may hold garbage (NaN logits, padding ids): neutralise.
  logits_BLV = jnp.where(m[..., None], logits_BLV, 0.0)
  targets_BL = jnp.where(m, targets_BL, 0)
  tok_lp = token_logprobs(logits_BLV, targets_BL)
  loss = aggregation.aggregate(-tok_lp, m, agg, normalizer, max_len)
  hit = jnp.argmax(logits_BLV, axis=-1) == targets_BL
  return loss, {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      f"{prefix}/accuracy": aggregation.masked_mean(hit, m),
      **aggregation.count_metrics(prefix, m),
  }


def _pair_inputs(chosen_tok_lp, chosen_mask, rejected_tok_lp, rejected_mask):
  mw = aggregation.check_mask(
      chosen_mask, jnp.shape(chosen_tok_lp), "chosen_mask", "chosen_tok_lp"
  )
  ml = aggregation.check_mask(
      rejected_mask,
      jnp.shape(rejected_tok_lp),
      "rejected_mask",
      "rejected_tok_lp",
  )
  if mw.ndim != 2 or ml.ndim != 2 or mw.shape[0] != ml.shape[0]:
    raise ValueError(
        f"chosen {tuple(mw.shape)} and rejected {tuple(ml.shape)} inputs must"
        " be [B, L_w] and [B, L_l] with the same number of pairs B."
    )
  # A pair counts when both completions have tokens; padding rows do not.
  valid = jnp.any(mw, axis=-1) & jnp.any(ml, axis=-1)
  return mw, ml, valid


def _pair_mean(loss_B, valid_B, normalizer):
  n = jnp.sum(valid_B, dtype=jnp.float32) if normalizer is None else normalizer
  n = jnp.asarray(n, jnp.float32)
  inv = jnp.where(n > 0, 1.0 / jnp.where(n > 0, n, 1.0), 0.0)
  return jnp.sum(jnp.where(valid_B, loss_B, 0.0)) * inv


def _pair_metrics(prefix, valid, **values):
  out = {
      f"{prefix}/{k}": aggregation.masked_mean(v, valid)
      for k, v in values.items()
  }
  n = jnp.sum(valid, dtype=jnp.float32)
  out[f"{prefix}/num_pairs"] = n
  out[f"{prefix}/empty_mask"] = (n == 0).astype(jnp.float32)
  return out


def redi(
    chosen_tok_lp: jax.Array,
    chosen_mask: jax.Array,
    rejected_tok_lp: jax.Array,
    rejected_mask: jax.Array,
    *,
    alpha: float = 0.8,
    normalizer: jax.Array | float | None = None,
    prefix: str = "redi",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """REDI stage-2 loss: mean_pairs(−s_w + α·s_l) (arXiv 2505.24850).

  s = Σ_t m·tok_lp / max(Σ_t m, 1) is the mean log-prob per completion token
  (EOS in, prompt out). No reference model, no sigmoid, no β. α = 0 is SFT on
  the positives with seq-mean-token-mean; α = 1 is symmetric REDI (needs a
  much smaller learning rate).

  Args:
    chosen_tok_lp: [B, L_w] token log-probs of the correct traces y_w.
    chosen_mask: [B, L_w] completion mask of y_w.
    rejected_tok_lp: [B, L_l] token log-probs of the incorrect traces y_l.
    rejected_mask: [B, L_l] completion mask of y_l.
    alpha: weight α ∈ [0, 1] of the negative term.
    normalizer: number of valid pairs in the whole step (default: this
      batch's).
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,s_w,s_l,margin,num_pairs,
    empty_mask}`.
  """
  aggregation.check_unit_interval("alpha", alpha)
  mw, ml, valid = _pair_inputs(
      chosen_tok_lp, chosen_mask, rejected_tok_lp, rejected_mask
  )
  s_w = sequence_logprob(chosen_tok_lp, mw, average=True)
  s_l = sequence_logprob(rejected_tok_lp, ml, average=True)
  loss = _pair_mean(-s_w + alpha * s_l, valid, normalizer)
  return loss, {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      **_pair_metrics(prefix, valid, s_w=s_w, s_l=s_l, margin=s_w - s_l),
  }


def _check_positive(name: str, value: object) -> None:
  if aggregation.is_static_number(value) and not float(value) > 0:
    raise ValueError(f"{name} must be > 0; got {value}.")


def _ref_logprob(ref, mask, name):
  ref = jax.lax.stop_gradient(jnp.asarray(ref, jnp.float32))
  if ref.ndim == 1 and ref.shape[0] == mask.shape[0]:
    return ref
  if ref.shape != mask.shape:
    raise ValueError(
        f"{name} has shape {tuple(ref.shape)}; pass [B, L] token log-probs"
        f" matching the mask {tuple(mask.shape)} or [B] sequence sums."
    )
  return sequence_logprob(ref, mask)


def dpo(
    chosen_tok_lp: jax.Array,
    chosen_mask: jax.Array,
    rejected_tok_lp: jax.Array,
    rejected_mask: jax.Array,
    ref_chosen_logp: jax.Array,
    ref_rejected_logp: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    normalizer: jax.Array | float | None = None,
    prefix: str = "dpo",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DPO: −log σ(β[(ℓ_w − ℓ_w^ref) − (ℓ_l − ℓ_l^ref)]) (arXiv 2305.18290).

  ℓ = Σ_t m·tok_lp is the summed completion log-prob; the reference is the
  stage-1 (SFT) model, under stop_gradient. Equals log 2 when π_θ = π_ref.

  Args:
    chosen_tok_lp, chosen_mask: [B, L_w] policy log-probs and mask of y_w.
    rejected_tok_lp, rejected_mask: [B, L_l] the same for y_l.
    ref_chosen_logp: reference log-probs of y_w, [B, L_w] tokens (summed
      under chosen_mask) or [B] sequence sums.
    ref_rejected_logp: the same for y_l.
    beta: β > 0 (REDI's best DPO baseline used 0.001).
    label_smoothing: ε ∈ [0, 0.5) of conservative DPO; 0 is plain DPO.
    normalizer: number of valid pairs in the whole step.
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,reward_chosen,reward_rejected,
    reward_margin,reward_accuracy,num_pairs,empty_mask}`; rewards are
    β·(ℓ − ℓ^ref).
  """
  _check_positive("beta", beta)
  if aggregation.is_static_number(label_smoothing) and not (
      0.0 <= label_smoothing < 0.5
  ):
    raise ValueError(
        f"label_smoothing must lie in [0, 0.5); got {label_smoothing}."
    )
  mw, ml, valid = _pair_inputs(
      chosen_tok_lp, chosen_mask, rejected_tok_lp, rejected_mask
  )
  r_w = beta * (
      sequence_logprob(chosen_tok_lp, mw)
      - _ref_logprob(ref_chosen_logp, mw, "ref_chosen_logp")
  )
  r_l = beta * (
      sequence_logprob(rejected_tok_lp, ml)
      - _ref_logprob(ref_rejected_logp, ml, "ref_rejected_logp")
  )
  x = r_w - r_l
  per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(x)
  if label_smoothing:
    per_pair = per_pair - label_smoothing * jax.nn.log_sigmoid(-x)
  loss = _pair_mean(per_pair, valid, normalizer)
  return loss, {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      **_pair_metrics(
          prefix,
          valid,
          reward_chosen=r_w,
          reward_rejected=r_l,
          reward_margin=x,
          reward_accuracy=(x > 0).astype(jnp.float32),
      ),
  }


def simpo(
    chosen_tok_lp: jax.Array,
    chosen_mask: jax.Array,
    rejected_tok_lp: jax.Array,
    rejected_mask: jax.Array,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    normalizer: jax.Array | float | None = None,
    prefix: str = "simpo",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SimPO: −log σ(β(s_w − s_l) − γ) (arXiv 2405.14734), reference-free.

  s is the length-normalised log-prob as in `redi`. As β → 0,
  (2/β)·∇SimPO(γ=0) → ∇REDI(α=1).

  Args:
    chosen_tok_lp, chosen_mask: [B, L_w] policy log-probs and mask of y_w.
    rejected_tok_lp, rejected_mask: [B, L_l] the same for y_l.
    beta: β > 0 (REDI's best baseline: 2).
    gamma: target reward margin γ (REDI's best baseline: 1).
    normalizer: number of valid pairs in the whole step.
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,s_w,s_l,margin,accuracy,num_pairs,
    empty_mask}`.
  """
  _check_positive("beta", beta)
  mw, ml, valid = _pair_inputs(
      chosen_tok_lp, chosen_mask, rejected_tok_lp, rejected_mask
  )
  s_w = sequence_logprob(chosen_tok_lp, mw, average=True)
  s_l = sequence_logprob(rejected_tok_lp, ml, average=True)
  x = beta * (s_w - s_l) - gamma
  loss = _pair_mean(-jax.nn.log_sigmoid(x), valid, normalizer)
  return loss, {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      **_pair_metrics(
          prefix,
          valid,
          s_w=s_w,
          s_l=s_l,
          margin=s_w - s_l,
          accuracy=(x > 0).astype(jnp.float32),
      ),
  }
