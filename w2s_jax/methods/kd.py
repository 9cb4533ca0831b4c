"""Offline knowledge distillation: a teacher fused into the step, or a cache.

docs/methods.md, "GKD and offline KD" and "Divergences"; the fidelity study
whose mask modes this follows is arXiv:2505.15442. Two methods share one
set of hyperparameters (``DistillHparams``):

* ``distill``: the frozen teacher runs inside the jitted step (under
  ``stop_gradient``); any divergence of ``losses.DIVERGENCES`` on the full,
  vocab-chunked distributions, or (``topk`` = k > 0) on the teacher's top k
  compared as a cache would be;
* ``distill_cache``: the teacher is a top-k cache written by the
  ``topk_cache`` job (``topk_mode``: tail bucket, renormalised, sparse FKL);
  no teacher is built while training.

Shape legend: b rows, L length, D d_model, V vocab, K cached top-k entries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from w2s_jax import losses
from w2s_jax.losses.topk import TOPK_MODES
from w2s_jax.methods.spec import Hparams, MethodSpec
from w2s_jax.training import steps

MASK_MODES = ("completion", "attention")


@dataclasses.dataclass(frozen=True)
class DistillHparams(Hparams):
  """The KD loss (``distill``, ``distill_cache``; SSB builds on it).

  Attributes:
    divergence: one of ``losses.DIVERGENCES``.
    temperature: τ of student and teacher distributions.
    tau_sq: multiply by τ² (Hinton scaling).
    beta: JSD's mixture weight.
    alpha: the skew of SKL / SRKL.
    mask_mode: 'completion' (completion tokens) or 'attention' (every real
      next token).
    chunked: vocab-chunked losses (False: the dense [b, L, V] reference).
    topk: ``distill`` only: compare the fused teacher's top k (0 = full).
    topk_mode: how a top-k teacher row is compared (``TOPK_MODES``).
    teacher_temperature: the temperature the teacher's top-k rows were
      recorded at; 0 = ``temperature`` (the trainer sets a cache's own).
  """

  METHOD = "distill"

  divergence: str = "fkl"
  temperature: float = 1.0
  tau_sq: bool = True
  beta: float = 0.5
  alpha: float = 0.1
  mask_mode: str = "completion"
  chunked: bool = True
  topk: int = 0
  topk_mode: str = "tail_bucket"
  teacher_temperature: float = 0.0

  def check(self) -> None:
    super().check()
    req = self.require
    req("divergence", self.divergence in losses.DIVERGENCES,
        f"one of {losses.DIVERGENCES}")  # fmt: skip
    req("temperature", self.temperature > 0, "> 0")
    req("beta", 0 <= self.beta <= 1, "in [0, 1] (JSD's mixture weight)")
    req("alpha", 0 <= self.alpha <= 1, "in [0, 1]")
    req("mask_mode", self.mask_mode in MASK_MODES, f"one of {MASK_MODES}")
    req("topk", self.topk >= 0, ">= 0 (0 = the full distribution)")
    req("topk_mode", self.topk_mode in TOPK_MODES, f"one of {TOPK_MODES}")
    req("teacher_temperature", self.teacher_temperature >= 0,
        ">= 0 (0 = loss.temperature)")  # fmt: skip

  def recorded_temperature(self) -> float:
    """The temperature of the teacher's top-k rows."""
    return self.teacher_temperature or self.temperature

  def for_cache(self, header: Any) -> DistillHparams:
    """These hyperparameters with a top-k cache's recording temperature.

    Raises:
      ValueError: a tail_bucket / sparse_fkl loss at a temperature other
        than the cache's (the tail mass at another temperature is unknown).
    """
    mode, tau = self.topk_mode, self.temperature
    if mode != "renormalized" and abs(tau - header.temperature) > 1e-6 * tau:
      raise ValueError(
          f"loss.temperature={tau} but the top-k cache was recorded at"
          f" {header.temperature}; with loss.topk_mode={mode!r} they must"
          f" match. Set --config.loss.temperature={header.temperature},"
          " rebuild the cache at the loss temperature, or use"
          " --config.loss.topk_mode=renormalized."
      )
    return self.replace(teacher_temperature=float(header.temperature))


def kd_mask(mb, hp: DistillHparams) -> jax.Array:
  if hp.mask_mode == "attention":
    return steps.attention_targets_mask(mb)
  return mb["completion_mask"][:, 1:]


def _kd_kwargs(norms, hp: DistillHparams) -> dict[str, Any]:
  return dict(
      temperature=hp.temperature,
      tau_sq=hp.tau_sq,
      beta=hp.beta,
      alpha=hp.alpha,
      normalizer=norms["tokens"],
      vocab_size=steps.vocab_size(hp),
  )


def topk_kd(h_s, w_s, ids, lps, mask, norms, hp, prefix="distill"):
  """Divergence of the student to top-k teacher rows.

  ``ids``/``lps`` ``[b, L-1, K]`` are aligned with ``h_s`` (row t predicts
  token t + 1) and were recorded at ``hp.recorded_temperature()``.
  """
  kw = _kd_kwargs(norms, hp)
  kw.update(
      mode=hp.topk_mode,
      divergence=hp.divergence,
      teacher_temperature=hp.recorded_temperature(),
      prefix=prefix,
  )
  if hp.chunked:
    return losses.chunked_topk_divergence(
        h_s, w_s, ids, lps, mask, chunk_size=steps.config_chunk_size(hp), **kw
    )
  return losses.topk_divergence(
      h_s @ w_s.astype(h_s.dtype), ids, lps, mask, **kw
  )


def distill_loss(student, frozen, mb, norms, hp: DistillHparams):
  """Token-level divergence to a teacher fused into the step.

  With ``hp.topk = k > 0`` the teacher's live distribution is cut to its top
  k at the recording temperature and compared as a top-k cache would be
  (``topk_mode``): the on-the-fly twin of ``distill_cache``. That path forms
  the teacher's [b, L, V] log-probs (a reference, and for small
  vocabularies); the default full-distribution path is vocab-chunked.
  """
  teacher = frozen["teacher"]
  mask = kd_mask(mb, hp)
  kw = _kd_kwargs(norms, hp)
  h_s = steps.hidden(student, mb)
  h_t = jax.lax.stop_gradient(steps.hidden(teacher, mb))
  w_t = jax.lax.stop_gradient(teacher.unembedding_DV())
  if hp.topk:
    zt = h_t @ w_t.astype(h_t.dtype)
    if kw["vocab_size"]:
      zt = zt[..., : kw["vocab_size"]]
    tau_rec = hp.recorded_temperature()
    lp_t = jax.nn.log_softmax(zt.astype(jnp.float32) / tau_rec, axis=-1)
    lps, ids = jax.lax.top_k(jax.lax.stop_gradient(lp_t), hp.topk)
    return topk_kd(h_s, student.unembedding_DV(), ids, lps, mask, norms, hp)
  if hp.chunked:
    return losses.chunked_divergence(
        hp.divergence,
        h_s,
        student.unembedding_DV(),
        h_t,
        w_t,
        mask,
        chunk_size=steps.config_chunk_size(hp),
        **kw,
    )
  zs = h_s @ student.unembedding_DV().astype(h_s.dtype)
  zt = h_t @ w_t.astype(h_t.dtype)
  return losses.divergence(hp.divergence, zs, zt, mask, **kw)


def cached_rows(mb) -> tuple[jax.Array, jax.Array]:
  """The cached teacher rows predicting tokens 1..L-1 (drop the last)."""
  return (
      mb["teacher_topk_ids"][:, :-1],
      mb["teacher_topk_logprobs"][:, :-1],
  )


def distill_cache_loss(student, frozen, mb, norms, hp: DistillHparams):
  """Offline KD from a teacher top-k cache; no teacher model."""
  del frozen
  ids, lps = cached_rows(mb)
  return topk_kd(
      steps.hidden(student, mb),
      student.unembedding_DV(),
      ids,
      lps,
      kd_mask(mb, hp),
      norms,
      hp,
  )


def kd_normalizers(batch, hp: DistillHparams):
  return steps.token_normalizer(batch, hp.mask_mode)


_METRICS = ("distill/loss", "distill/num_tokens")
DISTILL = MethodSpec(
    name="distill",
    family="kd",
    job="train",
    hparams=DistillHparams,
    loss=distill_loss,
    normalizers=kd_normalizers,
    data="tokens",
    frozen=("teacher",),
    metrics=_METRICS,
    paper="2505.15442",
    doc="docs/methods.md#gkd-and-offline-kd",
)
DISTILL_CACHE = dataclasses.replace(
    DISTILL,
    name="distill_cache",
    loss=distill_cache_loss,
    data="topk",
    frozen=(),
)

SPECS = (DISTILL, DISTILL_CACHE)
