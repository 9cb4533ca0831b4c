"""SFT: completion-only cross-entropy (W2SR, W2SR-P, SFT on RSD traces).

docs/methods.md, "SFT"; the weak-to-strong reasoning recipe is
arXiv:2505.20072 (W2SR). The loss is the vocab-chunked cross-entropy of the
completion tokens, EOS included, summed over the step's micro-batches and
divided by the step's number of completion tokens.

Shape legend: b rows of a micro-batch, L length, D d_model, V vocab.
"""

from __future__ import annotations

import dataclasses

from w2s_jax import losses
from w2s_jax.methods.spec import Hparams, MethodSpec
from w2s_jax.training import steps


@dataclasses.dataclass(frozen=True)
class SftHparams(Hparams):
  """SFT has no hyperparameters of its own (``vocab_size``, ``chunk_size``)."""

  METHOD = "sft"


def sft_loss(student, frozen, mb, norms, hp: SftHparams):
  """Completion-only cross-entropy, EOS included."""
  del frozen
  _, targets_BL, mask_BL = steps.shifted(mb)
  return losses.chunked_cross_entropy(
      steps.hidden(student, mb),
      student.unembedding_DV(),
      targets_BL,
      mask_BL,
      normalizer=norms["tokens"],
      vocab_size=steps.vocab_size(hp),
      chunk_size=steps.config_chunk_size(hp),
  )


def sft_normalizers(batch, hp: SftHparams):
  del hp
  return steps.token_normalizer(batch)


SFT = MethodSpec(
    name="sft",
    family="sft",
    job="train",
    hparams=SftHparams,
    loss=sft_loss,
    normalizers=sft_normalizers,
    data="tokens",
    metrics=("sft/loss", "sft/accuracy", "sft/num_tokens"),
    paper="2505.20072",
    doc="docs/methods.md#sft",
)

SPECS = (SFT,)
