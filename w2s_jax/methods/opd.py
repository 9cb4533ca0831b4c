"""OPD: on-policy distillation, the teacher's per-token reverse KL as reward.

The student samples; the teacher scores the sampled tokens in the scoring
pass; each token's advantage is the negative log-ratio of that token,

  A_t = −c · (log π_old(y_t) − log π_teacher(y_t))  +  w · A_task
  L   = agg(−min(ρ_t A_t, clip(ρ_t, 1−ε_lo, 1+ε_hi) A_t)),  A_t constant

where ``A_task`` is the group-relative task advantage of the row (weight
``task_weight`` w, 0 by default: pure distillation) and ρ_t the ratio to the
sampling policy (1 with one update per rollout). In expectation over the
student's samples, Σ_t A_t with w = 0 is −c·KL(π_θ ‖ π_teacher) of the whole
sequence, so this policy gradient descends the sequence-level reverse KL with
a dense, per-token reward; unlike GKD it needs only the sampled tokens'
teacher log-probs, not the teacher's full distributions.

References: on-policy distillation, GKD arXiv 2306.13649 (λ = 1 with the
reverse KL is this objective with full distributions); MiniLLM arXiv
2306.08543 (reverse-KL policy gradient); the Qwen3 technical report, arXiv
2505.09388 (on-policy distillation of its small models); the per-token
negative reverse KL as the OPD value function, arXiv 2605.07865.

Legend: M micro-batches, B rows (prompts × G), L length.
"""

from __future__ import annotations

import dataclasses

import jax

from w2s_jax import losses
from w2s_jax.losses import aggregation
from w2s_jax.methods import grpo
from w2s_jax.methods import spec as spec_lib
from w2s_jax.rl import scoring

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class OPDHparams(scoring.ScoringHparams):
  """OPD's ``loss`` section.

  Attributes:
    kl_coef: c, the weight of the per-token reverse-KL reward.
    task_weight: w, the weight of the group-relative task advantage (0 =
      pure distillation; the rollouts are graded either way).
    epsilon_low, epsilon_high: the ratio clip (several updates per rollout).
    agg: the aggregation over tokens.
    max_len: L_max of 'seq-mean-token-sum-norm'; 0 = rl.max_new_tokens.
  """

  METHOD = "opd"
  kl_coef: float = 1.0
  task_weight: float = 0.0
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  agg: str = "token-mean"
  max_len: int = 0

  def check(self) -> None:
    super().check()
    self.require("kl_coef", self.kl_coef > 0, "> 0")
    self.require("task_weight", self.task_weight >= 0, ">= 0 (0 = off)")
    grpo.check_policy_terms(self)


def advantages(mb: Batch, hp: OPDHparams) -> jax.Array:
  """[B, L-1] f32 per-token advantages (constants of the rollout)."""
  rkl = mb["old_logprobs"] - mb["teacher_logprobs"]
  adv = -float(hp.kl_coef) * rkl
  if hp.task_weight:
    adv = adv + float(hp.task_weight) * mb["advantages"][:, None]
  return jax.lax.stop_gradient(adv)


def opd_loss(student, frozen, mb, norms, hp: OPDHparams):
  """The clipped policy gradient with the per-token advantages."""
  del frozen
  tok_lp = scoring.token_logprobs(student, mb, hp)
  mask = scoring.completion_mask(mb)
  loss, metrics = losses.grpo_loss(
      tok_lp,
      advantages(mb, hp),
      mask,
      old_tok_lp_BL=mb["old_logprobs"],
      is_weight_BL=mb.get("tis_weight"),
      epsilon_low=float(hp.epsilon_low),
      epsilon_high=float(hp.epsilon_high),
      agg=str(hp.agg),
      normalizer=norms["pg"],
      max_len=grpo.max_len(hp),
      prefix="opd",
  )
  # k1 estimate of the per-token reverse KL to the teacher on the samples.
  rkl = mb["old_logprobs"] - mb["teacher_logprobs"]
  metrics["opd/reverse_kl"] = aggregation.masked_mean(rkl, mask != 0)
  return loss, metrics


SPECS = (
    spec_lib.MethodSpec(
        name="opd",
        family="opd",
        job="rl",
        hparams=OPDHparams,
        loss=opd_loss,
        normalizers=grpo.pg_normalizers,
        data="prompts",
        scores=lambda hp: ("teacher",),
        policy_gradient=True,
        metrics=("opd/reverse_kl", "opd/loss", "opd/clip_frac"),
        paper="2306.13649",
        doc="docs/methods.md#on-policy-distillation-opd",
        rollouts="student",
    ),
)
