"""Preference pairs: REDI stage 2, DPO and SimPO.

docs/methods.md, "REDI, DPO, SimPO". REDI (arXiv:2505.24850) is
reference-free and length-normalised, −s_w + α·s_l; DPO (arXiv:2305.18290)
compares with a frozen reference (the student's starting point); SimPO
(arXiv:2405.14734) is −log σ(β(s_w − s_l) − γ). Each example is a
(chosen, rejected) pair of completions of one problem; losses are divided
by the step's number of valid pairs.

Shape legend: b pairs of a micro-batch, L length.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from w2s_jax import losses
from w2s_jax.methods.spec import Hparams, MethodSpec
from w2s_jax.training import steps


@dataclasses.dataclass(frozen=True)
class RediHparams(Hparams):
  """alpha: the weight of the rejected completion's log-likelihood."""

  METHOD = "redi"
  alpha: float = 0.8

  def check(self) -> None:
    super().check()
    self.require("alpha", 0 <= self.alpha <= 1, "in [0, 1]")


@dataclasses.dataclass(frozen=True)
class DpoHparams(Hparams):
  """beta: the preference temperature."""

  METHOD = "dpo"
  beta: float = 0.1

  def check(self) -> None:
    super().check()
    self.require("beta", self.beta > 0, "> 0 (the preference temperature)")


@dataclasses.dataclass(frozen=True)
class SimpoHparams(Hparams):
  """beta: the reward scale; gamma: the target reward margin."""

  METHOD = "simpo"
  beta: float = 2.0
  gamma: float = 1.0

  def check(self) -> None:
    super().check()
    self.require("beta", self.beta > 0, "> 0 (the preference temperature)")
    self.require("gamma", self.gamma >= 0, ">= 0 (the reward margin)")


def pair_normalizers(batch, hp: Hparams):
  """The step's number of pairs with both completions non-empty."""
  del hp
  valid_B = jnp.any(batch["chosen_completion_mask"] != 0, axis=-1) & jnp.any(
      batch["rejected_completion_mask"] != 0, axis=-1
  )
  return {"pairs": jnp.sum(valid_B, dtype=jnp.float32)}


def _pair_logprobs(student, mb, hp: Hparams):
  vs = steps.vocab_size(hp)
  return (
      steps.token_lp(student, mb, "chosen_", vs),
      mb["chosen_completion_mask"][:, 1:],
      steps.token_lp(student, mb, "rejected_", vs),
      mb["rejected_completion_mask"][:, 1:],
  )


def redi_loss(student, frozen, mb, norms, hp: RediHparams):
  """REDI stage 2: −s_w + α·s_l, length-normalised."""
  del frozen
  return losses.redi(
      *_pair_logprobs(student, mb, hp),
      alpha=hp.alpha,
      normalizer=norms["pairs"],
  )


def dpo_loss(student, frozen, mb, norms, hp: DpoHparams):
  """DPO against the frozen reference ``frozen['ref']``."""
  lp_w, m_w, lp_l, m_l = _pair_logprobs(student, mb, hp)
  ref, vs = frozen["ref"], steps.vocab_size(hp)
  ref_w = jax.lax.stop_gradient(steps.token_lp(ref, mb, "chosen_", vs))
  ref_l = jax.lax.stop_gradient(steps.token_lp(ref, mb, "rejected_", vs))
  return losses.dpo(
      lp_w, m_w, lp_l, m_l, ref_w, ref_l,
      beta=hp.beta,
      normalizer=norms["pairs"],
  )  # fmt: skip


def simpo_loss(student, frozen, mb, norms, hp: SimpoHparams):
  """SimPO: −log σ(β(s_w − s_l) − γ)."""
  del frozen
  return losses.simpo(
      *_pair_logprobs(student, mb, hp),
      beta=hp.beta,
      gamma=hp.gamma,
      normalizer=norms["pairs"],
  )


_DOC = "docs/methods.md#redi-dpo-simpo"
REDI = MethodSpec(
    name="redi",
    family="pairs",
    job="train",
    hparams=RediHparams,
    loss=redi_loss,
    normalizers=pair_normalizers,
    data="pairs",
    metrics=("redi/loss",),
    paper="2505.24850",
    doc=_DOC,
)
DPO = MethodSpec(
    name="dpo",
    family="pairs",
    job="train",
    hparams=DpoHparams,
    loss=dpo_loss,
    normalizers=pair_normalizers,
    data="pairs",
    frozen=("ref",),
    metrics=("dpo/loss",),
    paper="2305.18290",
    doc=_DOC,
)
SIMPO = MethodSpec(
    name="simpo",
    family="pairs",
    job="train",
    hparams=SimpoHparams,
    loss=simpo_loss,
    normalizers=pair_normalizers,
    data="pairs",
    metrics=("simpo/loss",),
    paper="2405.14734",
    doc=_DOC,
)

SPECS = (REDI, DPO, SIMPO)
