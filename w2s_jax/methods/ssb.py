"""SSB: semantic soft bootstrapping, stage 2 (the student's training).

docs/methods.md, "SSB"; arXiv:2512.05105. The loss on the reply rows of
``question || reply`` is λ_KD·T²·KL(p_T || q_T) + λ_CE·CE, both pooled over
the step's reply tokens; the teacher rows p_T come from a top-k cache of the
frozen base model on the hinted prompt, written by the ``ssb_data`` job and
aligned to the student's rows (the top-k + tail cache replaces the paper's
full fp32 logits, docs/methods.md "SSB").

Shape legend: b rows, L length, D d_model, V vocab, K cached entries.
"""

from __future__ import annotations

import dataclasses

import jax

from w2s_jax import losses
from w2s_jax.methods import kd
from w2s_jax.methods.spec import MethodSpec
from w2s_jax.training import steps


@dataclasses.dataclass(frozen=True)
class SsbHparams(kd.DistillHparams):
  """The KD terms of ``kd.DistillHparams`` at T = 2, plus the two weights.

  Attributes:
    lambda_kd: weight of T²·KL(p_T || q_T).
    lambda_ce: weight of the reply rows' cross-entropy (0 = off).
  """

  METHOD = "ssb"
  temperature: float = 2.0
  lambda_kd: float = 1.0
  lambda_ce: float = 0.0

  def check(self) -> None:
    super().check()
    self.require("lambda_kd", self.lambda_kd >= 0, ">= 0")
    self.require("lambda_ce", self.lambda_ce >= 0, ">= 0")
    self.require("mask_mode", self.mask_mode == "completion",
                 "'completion' (SSB trains on the reply rows)")  # fmt: skip
    self.require("topk", self.topk == 0, "0 (the teacher is the cache)")


def ssb_loss(student, frozen, mb, norms, hp: SsbHparams):
  """λ_KD·T²·KL(p_T || q_T) + λ_CE·CE on the reply rows."""
  del frozen
  h_BLD = steps.hidden(student, mb)
  w_DV = student.unembedding_DV()
  _, targets_BL, mask_BL = steps.shifted(mb)
  ids_BLK, lps_BLK = kd.cached_rows(mb)
  kd_loss, metrics = kd.topk_kd(
      h_BLD, w_DV, ids_BLK, lps_BLK, mask_BL, norms, hp, prefix="ssb"
  )
  loss = hp.lambda_kd * kd_loss
  metrics["ssb/kd_loss"] = metrics.pop("ssb/loss")
  if hp.lambda_ce:
    ce, ce_metrics = losses.chunked_cross_entropy(
        h_BLD,
        w_DV,
        targets_BL,
        mask_BL,
        normalizer=norms["tokens"],
        vocab_size=steps.vocab_size(hp),
        chunk_size=steps.config_chunk_size(hp),
        prefix="ssb_ce",
    )
    loss = loss + hp.lambda_ce * ce
    metrics["ssb/ce_loss"] = ce_metrics["ssb_ce/loss"]
  metrics["ssb/loss"] = jax.lax.stop_gradient(loss)
  return loss, metrics


def ssb_normalizers(batch, hp: SsbHparams):
  """The step's reply tokens |M| (the completion mask)."""
  del hp
  return steps.token_normalizer(batch)


SSB = MethodSpec(
    name="ssb",
    family="ssb",
    job="train",
    hparams=SsbHparams,
    loss=ssb_loss,
    normalizers=ssb_normalizers,
    data="topk",
    metrics=("ssb/loss", "ssb/kd_loss", "ssb/ce_loss"),
    paper="2512.05105",
    doc="docs/methods.md#ssb",
)

SPECS = (SSB,)
