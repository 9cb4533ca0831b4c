"""GRPO, Dr.GRPO and DAPO: the clipped group-relative policy gradient.

docs/methods.md, "GRPO"; arXiv 2402.03300 (GRPO), 2503.14476 (DAPO),
2503.20783 (Dr.GRPO). The student samples G completions per prompt; their
rewards give group-relative advantages A (``rollouts``); the loss is

  ρ  = exp(clip(tok_lp − old_lp, −20, 20))
  pg = −min(ρA, clip(ρ, 1−ε_lo, 1+ε_hi)·A), dual clip c for A < 0
  L  = agg(pg + β_ref·k(ref_lp, tok_lp))

(``losses.grpo_loss``). Dr.GRPO and DAPO are presets of the same
hyperparameters (``VARIANTS``), not separate code paths. The helpers here
(``clip_kwargs``, ``pg_normalizers``) are shared by the other policy-gradient
methods (``kdrl``, ``ampo``, ``opd``).

Legend: M micro-batches, B rows (prompts × G), L length.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from w2s_jax import losses
from w2s_jax.methods import spec as spec_lib
from w2s_jax.rl import scoring

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class GRPOHparams(scoring.ScoringHparams):
  """GRPO's ``loss`` section (defaults: the GRPO paper's, arXiv 2402.03300).

  Attributes:
    epsilon_low: ε_lo of the ratio clip.
    epsilon_high: ε_hi of the ratio clip (DAPO's clip-higher: 0.28).
    dual_clip: c of the dual clip on A < 0 (0 = off).
    beta_ref: β_ref of the KL to the reference policy (0 = no reference).
    kl_estimator: the sampled-token estimator of that KL (k1, k2, k3).
    agg: the aggregation over tokens (docs/methods.md, "Aggregation").
    max_len: L_max of 'seq-mean-token-sum-norm'; 0 = rl.max_new_tokens.
  """

  METHOD = "grpo"
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  dual_clip: float = 3.0
  beta_ref: float = 0.04
  kl_estimator: str = "k3"
  agg: str = "seq-mean-token-mean"
  max_len: int = 0

  def check(self) -> None:
    super().check()
    check_policy_terms(self)
    self.require("beta_ref", self.beta_ref >= 0, ">= 0")
    self.require(
        "kl_estimator",
        self.kl_estimator in losses.KL_ESTIMATORS,
        f"one of {losses.KL_ESTIMATORS}",
    )


def check_policy_terms(hp: Any) -> None:
  """Bounds of the clipped policy-gradient keys ``hp`` has (ratio clip, dual
  clip, aggregation, L_max), shared by GRPO, KDRL, AMPO and OPD."""
  keys = set(hp.keys())
  if "epsilon_low" in keys:
    hp.require("epsilon_low", 0 <= hp.epsilon_low < 1, "in [0, 1)")
  if "epsilon_high" in keys:
    hp.require("epsilon_high", hp.epsilon_high >= 0, ">= 0")
  if "dual_clip" in keys:
    hp.require(
        "dual_clip", hp.dual_clip == 0 or hp.dual_clip > 1, "0 (off) or > 1"
    )
  hp.require("agg", hp.agg in losses.AGG_MODES, f"one of {losses.AGG_MODES}")
  hp.require("max_len", hp.max_len >= 0, ">= 0 (0 = rl.max_new_tokens)")


# The loss part of each variant (the rollout part, e.g. DAPO's dynamic
# sampling and overlong shaping, is in configs/grpo.py).
VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "drgrpo": dict(agg="seq-mean-token-sum-norm", beta_ref=0.0, dual_clip=0.0),
    "dapo": dict(
        epsilon_high=0.28, dual_clip=10.0, agg="token-mean", beta_ref=0.0
    ),
}


def max_len(hp: Any) -> int | None:
  return int(hp.max_len) or None


def pg_normalizers(batch: Batch, hp: Any) -> dict[str, jax.Array]:
  """Step-global normalisers over all micro-batches (docs/methods.md,
  "Aggregation"): 'pg' for the policy loss (its ``agg``), 'tokens' (token
  means such as AMPO's entropy)."""
  m = scoring.rows(scoring.completion_mask(batch)) != 0
  return {
      "pg": losses.normalizer(m, str(hp.agg), max_len(hp)),
      "tokens": jnp.sum(m, dtype=jnp.float32),
  }


def clip_kwargs(mb: Batch, norms, hp: GRPOHparams) -> dict[str, Any]:
  """The keyword arguments of ``losses.grpo_loss`` / ``kdrl_loss``."""
  return dict(
      old_tok_lp_BL=mb["old_logprobs"],
      ref_tok_lp_BL=mb.get("ref_logprobs"),
      is_weight_BL=mb.get("tis_weight"),
      beta_ref=float(hp.beta_ref),
      kl_estimator=str(hp.kl_estimator),
      epsilon_low=float(hp.epsilon_low),
      epsilon_high=float(hp.epsilon_high),
      dual_clip=float(hp.dual_clip) if hp.dual_clip > 0 else None,
      agg=str(hp.agg),
      normalizer=norms["pg"],
      max_len=max_len(hp),
  )


def grpo_loss(student, frozen, mb, norms, hp: GRPOHparams):
  """GRPO / Dr.GRPO / DAPO clipped loss on one micro-batch."""
  del frozen
  tok_lp = scoring.token_logprobs(student, mb, hp)
  return losses.grpo_loss(
      tok_lp,
      mb["advantages"],
      scoring.completion_mask(mb),
      **clip_kwargs(mb, norms, hp),
  )


def ref_scores(hp: Any) -> tuple[str, ...]:
  """The reference is scored only when its KL is in the loss."""
  return ("ref",) if float(hp.beta_ref) > 0 else ()


SPECS = (
    spec_lib.MethodSpec(
        name="grpo",
        family="grpo",
        job="rl",
        hparams=GRPOHparams,
        loss=grpo_loss,
        normalizers=pg_normalizers,
        data="prompts",
        scores=ref_scores,
        policy_gradient=True,
        metrics=("grpo/loss", "grpo/clip_frac", "grpo/kl"),
        paper="2402.03300",
        doc="docs/methods.md#grpo",
        rollouts="student",
    ),
)
