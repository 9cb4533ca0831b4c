"""The per-step RSD acceptance rule (docs/methods.md, "RSD") on fixed logits.

Legend: B rows, V shared vocab, Kt teacher candidates, Ks student candidates,
C probed candidates, J proposals per step.

See ``decoding.reverse_spec`` for the rule in words and the loop around it.
Kept separate so that it can be tested on hand-built logits and reused by a
host-side reference. Pure function of (key, teacher logits, student logits).
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
from flax import struct

from w2s_jax.decoding import sampling_params as sp_lib

STUDENT_PROB_MODES = ("after", "before")


@dataclasses.dataclass(frozen=True)
class RSDParams:
  """The RSD acceptance rule (defaults: the paper's code).

  Attributes:
    threshold: minimum student probability of an accepted teacher token;
      0 accepts every member of S_ids, > 1 accepts nothing (pure student).
    num_proposals: J, teacher proposals per step before falling back.
    top_k: size of the student's set S_ids.
    teacher_top_k: candidates of the teacher's proposal distribution;
      None = ``top_k``.
    teacher_temperature: T_t > 0.
    teacher_top_p: teacher nucleus in (0, 1].
    student_temperature: T_s > 0.
    student_top_p: student nucleus in (0, 1].
    student_prob: 'after' (p_S after temperature and top-p) or 'before'
      (raw model probability).
    probe_k: candidates probed before the nucleus bisection (speed only).
  """

  threshold: float = 0.01
  num_proposals: int = 5
  top_k: int = 20
  teacher_top_k: int | None = None
  teacher_temperature: float = 0.7
  teacher_top_p: float = 0.95
  student_temperature: float = 0.7
  student_top_p: float = 0.95
  student_prob: str = "after"
  probe_k: int = sp_lib.TOP_P_PROBE

  def __post_init__(self):
    thr = sp_lib.check_real("threshold", self.threshold)
    if thr < 0:
      raise ValueError(f"threshold must be >= 0, got {thr}.")
    object.__setattr__(self, "threshold", thr)
    if self.teacher_top_k is None:
      object.__setattr__(self, "teacher_top_k", self.top_k)
    for name in ("num_proposals", "top_k", "teacher_top_k", "probe_k"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
      object.__setattr__(self, name, int(v))
    for who in ("teacher", "student"):
      t = sp_lib.check_real(
          f"{who}_temperature", getattr(self, f"{who}_temperature")
      )
      if t <= 0:
        raise ValueError(
            f"{who}_temperature must be > 0 for RSD (it samples from both"
            f" models), got {t}."
        )
      p = sp_lib.check_real(f"{who}_top_p", getattr(self, f"{who}_top_p"))
      if not 0.0 < p <= 1.0:
        raise ValueError(f"{who}_top_p must be in (0, 1] (1 = off), got {p}.")
      object.__setattr__(self, f"{who}_temperature", t)
      object.__setattr__(self, f"{who}_top_p", p)
    if self.student_prob not in STUDENT_PROB_MODES:
      raise ValueError(
          f"student_prob must be one of {STUDENT_PROB_MODES}, got"
          f" {self.student_prob!r}."
      )

  def check_vocab(self, vocab_size: int) -> None:
    for name in ("top_k", "teacher_top_k"):
      if getattr(self, name) > vocab_size:
        raise ValueError(
            f"{name}={getattr(self, name)} exceeds the shared vocabulary"
            f" size {vocab_size}; use a value <= {vocab_size}."
        )


@struct.dataclass
class RSDChoice:
  """One step's outcome per row.

  Attributes:
    token_B: the emitted token.
    from_teacher_B: True if a teacher proposal was accepted.
    proposal_B: index of the accepted proposal, -1 for a fallback.
    sampling_logprob_B: log P(token) under the whole RSD procedure.
  """

  token_B: jax.Array
  from_teacher_B: jax.Array
  proposal_B: jax.Array
  sampling_logprob_B: jax.Array


def _nucleus_mass(x_BV, log_norm_B, probe_vals_BC, top_p):
  """Mass of the top-p nucleus of softmax(x): probe first, bisection if not."""
  v = x_BV.shape[-1]

  def probe_mass():
    keep_BC = sp_lib.top_p_keep(probe_vals_BC, log_norm_B, top_p)
    probs_BC = jnp.exp(probe_vals_BC - log_norm_B[:, None])
    return jnp.sum(jnp.where(keep_BC, probs_BC, 0.0), axis=-1)

  if probe_vals_BC.shape[-1] == v:
    return probe_mass()

  def bisection_mass():
    probs_BV = jnp.exp(x_BV - log_norm_B[:, None])
    return sp_lib.nucleus_mass(probs_BV, top_p)

  probs_BC = jnp.exp(probe_vals_BC - log_norm_B[:, None])
  closed = jnp.all(jnp.sum(probs_BC, axis=-1) >= top_p)
  return jax.lax.cond(closed, probe_mass, bisection_mass)


def rsd_choose(
    rng: jax.Array,
    teacher_logits_BV: jax.Array,
    student_logits_BV: jax.Array,
    params: RSDParams,
) -> RSDChoice:
  """Applies the RSD rule to one step of both models' logits.

  Args:
    rng: the step's key; proposal j uses ``fold_in(rng, j)``, the fallback
      ``fold_in(rng, num_proposals)``.
    teacher_logits_BV: raw teacher logits over the shared vocabulary.
    student_logits_BV: raw student logits over the shared vocabulary.
    params: the rule (static).

  Returns:
    An ``RSDChoice``.
  """
  zt_BV = teacher_logits_BV.astype(jnp.float32)
  zs_BV = student_logits_BV.astype(jnp.float32)
  v = zt_BV.shape[-1]
  params.check_vocab(v)
  kt, ks, j = params.teacher_top_k, params.top_k, params.num_proposals

  # Teacher proposal distribution: nucleus on the full vocab, then top-k.
  xt_BV = zt_BV / params.teacher_temperature
  valst_BK, idst_BK = jax.lax.top_k(xt_BV, kt)
  int_BK = sp_lib.top_p_keep(
      valst_BK, jax.nn.logsumexp(xt_BV, axis=-1), params.teacher_top_p
  )
  candt_BK = jnp.where(int_BK, valst_BK, -jnp.inf)

  # Student set S_ids: its top-k ids (the rank order does not depend on the
  # temperature). p_S over them: processed ("after": 0 outside the nucleus,
  # renormalised over the nucleus, not the top-k) or raw ("before").
  xs_BV = zs_BV / params.student_temperature
  lses_B = jax.nn.logsumexp(xs_BV, axis=-1)
  need_mass = params.student_prob == "after" and params.student_top_p < 1.0
  kp = min(v, max(ks, params.probe_k)) if need_mass else ks
  probe_BC, idss_BC = jax.lax.top_k(xs_BV, kp)
  # S_ids are the first ks probed tokens. Masked, not sliced: XLA:CPU turns a
  # slice of a top_k result into a sort of the whole vocabulary.
  member_C = jnp.arange(kp) < ks
  if params.student_prob == "after":
    logps_BC = probe_BC - lses_B[:, None]
    if need_mass:
      in_nucleus_BC = sp_lib.top_p_keep(probe_BC, lses_B, params.student_top_p)
      log_z_B = jnp.log(
          _nucleus_mass(xs_BV, lses_B, probe_BC, params.student_top_p)
      )
      logps_BC = jnp.where(in_nucleus_BC, logps_BC - log_z_B[:, None], -jnp.inf)
  else:
    raw_BC = jnp.take_along_axis(zs_BV, idss_BC, axis=-1)
    logps_BC = raw_BC - jax.nn.logsumexp(zs_BV, axis=-1)[:, None]
  logps_BC = jnp.where(member_C, logps_BC, -jnp.inf)

  # Which teacher candidates pass the predicate (ids are unique per row, so
  # at most one student slot matches a teacher candidate).
  match_BKC = (idst_BK[:, :, None] == idss_BC[:, None, :]) & member_C
  in_s_BK = jnp.any(match_BKC, axis=-1)
  logps_at_t_BK = jnp.sum(jnp.where(match_BKC, logps_BC[:, None, :], 0.0), -1)
  accept_BK = int_BK & in_s_BK & (jnp.exp(logps_at_t_BK) >= params.threshold)

  # J proposals, then the first accepted one.
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(j))
  draw = lambda key: jax.random.categorical(key, candt_BK, axis=-1)
  idx_JB = jax.vmap(draw)(keys)
  acc_JB = jnp.take_along_axis(accept_BK, idx_JB.T, axis=-1).T
  any_B = jnp.any(acc_JB, axis=0)
  first_B = jnp.argmax(acc_JB, axis=0)
  idx_B = jnp.take_along_axis(idx_JB, first_B[None], axis=0)[0]
  teacher_tok_B = jnp.take_along_axis(idst_BK, idx_B[:, None], -1)[:, 0]

  # Fallback: p_S renormalised over S_ids.
  cands_BC = logps_BC
  fb_key = jax.random.fold_in(rng, j)
  fb_idx_B = jax.random.categorical(fb_key, cands_BC, axis=-1)
  student_tok_B = jnp.take_along_axis(idss_BC, fb_idx_B[:, None], -1)[:, 0]
  token_B = jnp.where(any_B, teacher_tok_B, student_tok_B).astype(jnp.int32)

  # Exact probability of the emitted token under the whole procedure.
  catt_BK = jax.nn.softmax(candt_BK, axis=-1)
  r_B = jnp.sum(jnp.where(accept_BK, catt_BK, 0.0), axis=-1)
  log_miss_B = j * jnp.log1p(-jnp.minimum(r_B, 1.0))
  hit_scale_B = jnp.where(r_B > 0, -jnp.expm1(log_miss_B) / r_B, 0.0)
  is_t_BK = (idst_BK == token_B[:, None]) & accept_BK
  pt_B = jnp.sum(jnp.where(is_t_BK, catt_BK, 0.0), axis=-1)
  qs_BC = jax.nn.softmax(cands_BC, axis=-1)
  is_s_BC = (idss_BC == token_B[:, None]) & member_C
  ps_B = jnp.sum(jnp.where(is_s_BC, qs_BC, 0.0), axis=-1)
  prob_B = pt_B * hit_scale_B + jnp.exp(log_miss_B) * ps_B
  return RSDChoice(
      token_B=token_B,
      from_teacher_B=any_B,
      proposal_B=jnp.where(any_B, first_B, -1).astype(jnp.int32),
      sampling_logprob_B=jnp.log(prob_B),
  )
