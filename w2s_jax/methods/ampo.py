"""AMPO: GRPO with teacher solutions injected into groups that all fail.

docs/methods.md, "AMPO"; arXiv 2510.02227 (builds on LUFFY, 2504.14945).
Per prompt, G rollouts; when none is correct, up to ``rl.ampo_max_teachers``
of them are replaced by stored teacher solutions ('guided' rollouts,
``rollouts.Roller``), the best first by the student's comprehension score.
Advantages without std over the mixed group; the loss is

  on-policy tokens:  clipped ratio, ε, dual clip c
  injected tokens:   −A·f(π_θ(y_t)),  f(p) = p/(p+γ)   (no ratio, no clip)
  L = Σ ℓm / (N·L_max) − c_H · token_mean(entropy)

(``losses.ampo_loss``). No reference, no teacher in the update.

Legend: M micro-batches, B rows (prompts × G), L length.
"""

from __future__ import annotations

import dataclasses

from w2s_jax import losses
from w2s_jax.methods import grpo
from w2s_jax.methods import spec as spec_lib
from w2s_jax.rl import scoring


@dataclasses.dataclass(frozen=True)
class AMPOHparams(scoring.ScoringHparams):
  """AMPO's ``loss`` section (defaults: the paper's).

  Attributes:
    epsilon_low: ε of the symmetric ratio clip on on-policy tokens.
    dual_clip: c of the dual clip (0 = off).
    agg: the aggregation (Σ/(N·L_max) in the paper).
    max_len: L_max of 'seq-mean-token-sum-norm'; 0 = rl.max_new_tokens.
    entropy_coef: c_H of the entropy bonus (0 = off, no entropy computed).
    off_policy_gamma: γ of f(p) = p/(p+γ) on injected tokens.
  """

  METHOD = "ampo"
  epsilon_low: float = 0.2
  dual_clip: float = 10.0
  agg: str = "seq-mean-token-sum-norm"
  max_len: int = 0
  entropy_coef: float = 0.001
  off_policy_gamma: float = 0.1

  def check(self) -> None:
    super().check()
    grpo.check_policy_terms(self)
    self.require("entropy_coef", self.entropy_coef >= 0, ">= 0")
    self.require("off_policy_gamma", self.off_policy_gamma > 0, "> 0")


def ampo_loss(student, frozen, mb, norms, hp: AMPOHparams):
  """Clip on-policy, p/(p+γ) on injected rows, entropy bonus."""
  del frozen
  coef = float(hp.entropy_coef)
  tok_lp, ent = scoring.token_stats(student, mb, hp, entropy=bool(coef))
  return losses.ampo_loss(
      tok_lp,
      mb["advantages"],
      scoring.completion_mask(mb),
      mb["off_policy"],
      old_tok_lp_BL=mb["old_logprobs"],
      is_weight_BL=mb.get("tis_weight"),
      entropy_BL=ent,
      entropy_coef=coef,
      gamma=float(hp.off_policy_gamma),
      epsilon=float(hp.epsilon_low),
      dual_clip=float(hp.dual_clip) if hp.dual_clip > 0 else None,
      agg=str(hp.agg),
      normalizer=norms["pg"],
      max_len=grpo.max_len(hp),
      entropy_normalizer=norms["tokens"],
  )


SPECS = (
    spec_lib.MethodSpec(
        name="ampo",
        family="ampo",
        job="rl",
        hparams=AMPOHparams,
        loss=ampo_loss,
        normalizers=grpo.pg_normalizers,
        data="prompts",
        policy_gradient=True,
        metrics=("ampo/off_policy_frac", "ampo/entropy"),
        paper="2510.02227",
        doc="docs/methods.md#ampo",
        rollouts="guided",
    ),
)
