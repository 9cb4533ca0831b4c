"""KDRL: GRPO plus β_t·KD to a frozen teacher on the student's rollouts.

docs/methods.md, "KDRL"; arXiv 2506.02208. The teacher scores the student's
sampled tokens in the scoring pass (``teacher_logprobs``), so the update
needs no teacher:

  R    = sg(teacher_lp) − tok_lp
  kd   = ½R² ('k2', the exact ∇RKL) | clamped k3 (∇FKL) | −sg(R)·tok_lp ('k1')
  keep = 1 ('none') | wrong rows ('response') | groups with no correct row
         ('group')
  L    = L_GRPO + β_t · Σ kd·mask·keep / Σ mask·keep
  β_t  = max(kd_beta_init − kd_beta_decay·t, kd_beta_min)   (``kd_beta``)

(``losses.kdrl_loss``). β_t rides in the batch (``step_arrays``), one value
per row, so the annealing needs neither a recompile nor the step counter in
the loss. β = 0 is exactly GRPO.

Legend: M micro-batches, B rows (prompts × G), L length, G group size.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from w2s_jax import losses
from w2s_jax.methods import grpo
from w2s_jax.methods import spec as spec_lib
from w2s_jax.rl import scoring

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class KDRLHparams(grpo.GRPOHparams):
  """KDRL's ``loss`` section: GRPO's keys plus the KD term's.

  Attributes:
    beta_ref: as GRPO's; 0 by default (KDRL's setup has no reference KL).
    kd_estimator: 'k2' (½R², the paper's), 'k3' or 'k1' (R as a reward).
    kd_masking: 'none', 'response' (wrong rows only) or 'group' (groups with
      no correct row).
    kd_agg: the aggregation of the KD term over kept tokens.
    kd_beta_init, kd_beta_min, kd_beta_decay: the β_t schedule (decay 0:
      constant β = kd_beta_init).
    group_size: G of 'group' masking; 0 = rl.group_size (the trainer sets it).
  """

  METHOD = "kdrl"
  beta_ref: float = 0.0
  kd_estimator: str = "k2"
  kd_masking: str = "none"
  kd_agg: str = "token-mean"
  kd_beta_init: float = 5e-3
  kd_beta_min: float = 1e-3
  kd_beta_decay: float = 5e-5
  group_size: int = 0

  def check(self) -> None:
    super().check()
    ests, masks = losses.KL_ESTIMATORS, losses.KD_MASKING
    self.require("kd_estimator", self.kd_estimator in ests, f"one of {ests}")
    self.require("kd_masking", self.kd_masking in masks, f"one of {masks}")
    self.require(
        "kd_agg", self.kd_agg in losses.AGG_MODES, f"one of {losses.AGG_MODES}"
    )
    self.require("kd_beta_init", self.kd_beta_init >= 0, ">= 0")
    self.require(
        "kd_beta_min",
        0 <= self.kd_beta_min <= self.kd_beta_init,
        f"in [0, loss.kd_beta_init={self.kd_beta_init}]",
    )
    self.require("kd_beta_decay", self.kd_beta_decay >= 0, ">= 0 (0 = const)")
    self.require("group_size", self.group_size >= 0, ">= 0 (0 = rl.group_size)")


# The configs' named β schedules: anneal (the paper's) or constant.
SCHEDULES = ("anneal", "const")


def schedule(name: str, hp: KDRLHparams) -> KDRLHparams:
  """``hp`` with the β schedule ``name`` ('const': β_t = kd_beta_init)."""
  if name not in SCHEDULES:
    raise ValueError(f"beta={name!r}: choose one of {SCHEDULES}.")
  if name == "anneal":
    return hp
  return hp.replace(kd_beta_decay=0.0, kd_beta_min=hp.kd_beta_init)


def kd_beta(hp: KDRLHparams, step: int) -> float:
  """β_t of RL step ``step``: max(β_init − δ·t, β_min)."""
  return float(
      losses.kdrl_beta(
          step,
          beta_init=float(hp.kd_beta_init),
          beta_min=float(hp.kd_beta_min),
          decay=float(hp.kd_beta_decay),
      )
  )


def step_arrays(hp: KDRLHparams, step: int, rows: int) -> dict[str, np.ndarray]:
  """The per-step batch entry of KDRL: ``kd_beta`` [rows] f32 = β_t."""
  return {"kd_beta": np.full((rows,), kd_beta(hp, step), np.float32)}


def kd_keep(correct_B: jax.Array, hp: KDRLHparams) -> jax.Array:
  """[B] bool: the rows that receive the KD term (``kd_masking``)."""
  return losses.kd_keep_mask(
      correct_B, str(hp.kd_masking), int(hp.group_size), correct_B.shape[0]
  )


def normalizers(batch: Batch, hp: KDRLHparams) -> dict[str, jax.Array]:
  """GRPO's normalisers plus 'kd' = Σ mask·keep over the step (its
  ``kd_agg``)."""
  out = grpo.pg_normalizers(batch, hp)
  m = scoring.rows(scoring.completion_mask(batch)) != 0
  kd_m = m & kd_keep(scoring.rows(batch["correct"]), hp)[:, None]
  out["kd"] = losses.normalizer(kd_m, str(hp.kd_agg), grpo.max_len(hp))
  return out


def kdrl_loss(student, frozen, mb, norms, hp: KDRLHparams):
  """GRPO's clipped loss + β_t·KD on one micro-batch."""
  del frozen
  tok_lp = scoring.token_logprobs(student, mb, hp)
  return losses.kdrl_loss(
      tok_lp,
      mb["teacher_logprobs"],
      mb["advantages"],
      scoring.completion_mask(mb),
      beta=mb["kd_beta"][0],
      estimator=str(hp.kd_estimator),
      kd_masking=str(hp.kd_masking),
      correct_B=mb["correct"],
      group_size=int(hp.group_size),
      kd_agg=str(hp.kd_agg),
      kd_normalizer=norms["kd"],
      kd_max_len=grpo.max_len(hp),
      **grpo.clip_kwargs(mb, norms, hp),
  )


def scores(hp: KDRLHparams) -> tuple[str, ...]:
  return grpo.ref_scores(hp) + ("teacher",)


SPECS = (
    spec_lib.MethodSpec(
        name="kdrl",
        family="kdrl",
        job="rl",
        hparams=KDRLHparams,
        loss=kdrl_loss,
        normalizers=normalizers,
        data="prompts",
        scores=scores,
        policy_gradient=True,
        metrics=("kdrl/kd", "kdrl/beta", "kdrl/rkl_k1", "kdrl/keep_frac"),
        paper="2506.02208",
        doc="docs/methods.md#kdrl",
        rollouts="student",
        step_arrays=step_arrays,
    ),
)
