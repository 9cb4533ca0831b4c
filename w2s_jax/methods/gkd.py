"""GKD: on-policy distillation with JSD(β) to a teacher fused into the step.

docs/methods.md, "GKD and offline KD"; arXiv 2306.13649. Each step, with
probability λ (``lambda_on_policy``) the completions are the student's own
samples (no gradient through the sampling), else the data's; the loss is the
token-mean generalised JSD(β) between the teacher's and the student's full
next-token distributions on those completions:

  L = Σ_t mask_t · JSD(β)(p_teacher,t ‖ q_student,t) / Σ_t mask_t

The teacher runs inside the update (``frozen=('teacher',)``) because the
loss needs whole distributions, not the sampled tokens' log-probs, so the
scoring pass is skipped. Rollouts are 'mixed' and ungraded.

Legend: M micro-batches, B rows, L length.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from w2s_jax.methods import kd
from w2s_jax.methods import spec as spec_lib
from w2s_jax.rl import scoring

Batch = dict[str, jax.Array]
MASK_MODES = ("completion", "attention")


@dataclasses.dataclass(frozen=True)
class GKDHparams(scoring.ScoringHparams):
  """GKD's ``loss`` section (defaults: TRL's GKD trainer).

  Attributes:
    lambda_on_policy: λ, the probability that a step's completions are the
      student's samples (1 = fully on-policy; 0 = the data only).
    divergence: 'jsd' (configs/distill.py runs the other divergences).
    beta: β of JSD(β) (0.5: the symmetric JSD).
    temperature: τ of both distributions.
    tau_sq: multiply the loss by τ² (off in GKD).
    mask_mode: 'completion' (the completion tokens) or 'attention'.
  """

  METHOD = "gkd"
  lambda_on_policy: float = 0.5
  divergence: str = "jsd"
  beta: float = 0.5
  temperature: float = 1.0
  tau_sq: bool = False
  mask_mode: str = "completion"

  def check(self) -> None:
    super().check()
    self.require(
        "lambda_on_policy", 0 <= self.lambda_on_policy <= 1, "in [0, 1]"
    )
    self.require(
        "divergence",
        self.divergence == "jsd",
        "'jsd' (use configs/distill.py for other divergences)",
    )
    self.require("beta", 0 <= self.beta <= 1, "in [0, 1]")
    self.require("temperature", self.temperature > 0, "> 0")
    self.require(
        "mask_mode", self.mask_mode in MASK_MODES, f"one of {MASK_MODES}"
    )


def _distill_hp(hp: GKDHparams) -> kd.DistillHparams:
  """The offline KD loss's hparams (``methods.kd.distill_loss``) that GKD
  shares (divergence, β, τ, τ², mask, chunking, vocab); the one place that
  maps GKD's hparams onto it."""
  shared = set(kd.DistillHparams.keys()) & set(GKDHparams.keys())
  return kd.DistillHparams(**{k: getattr(hp, k) for k in sorted(shared)})


def normalizers(batch: Batch, hp: GKDHparams) -> dict[str, jax.Array]:
  del hp
  mask = scoring.completion_mask(batch)
  return {"tokens": jnp.sum(mask != 0, dtype=jnp.float32)}


def gkd_loss(student, frozen, mb, norms, hp: GKDHparams):
  """Token-mean JSD(β) to the fused teacher on one micro-batch."""
  return kd.distill_loss(student, frozen, mb, norms, _distill_hp(hp))


SPECS = (
    spec_lib.MethodSpec(
        name="gkd",
        family="gkd",
        job="rl",
        hparams=GKDHparams,
        loss=gkd_loss,
        normalizers=normalizers,
        data="prompts",
        frozen=("teacher",),
        metrics=("gkd/on_policy",),
        paper="2306.13649",
        doc="docs/methods.md#gkd-and-offline-kd",
        rollouts="mixed",
    ),
)
