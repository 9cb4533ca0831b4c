"""RL scoring: the jitted scoring step and the helpers the RL losses share.

One RL step is rollouts (host, ``rollouts.py``) -> ``score`` (one jitted
call) -> ``rl.updates_per_rollout`` clipped updates through the generic
``steps.make_train_step`` with the method's spec (``w2s_jax.methods``:
``grpo``, ``kdrl``, ``gkd``, ``ampo``, ``opd``; each declares its typed
hyperparameters, loss adapter, what it scores and how it rolls out).

``make_score_fn`` returns ``score(params, frozen, batch)``: in ONE jitted
function, the student's log-probs of its own sampled tokens (π_old of the
clipped ratio, fixed for all updates of the rollout), the reference's
(``frozen['ref']``, when β_ref > 0) and the teacher's (``frozen['teacher']``,
KDRL). Only ``[B, L-1]`` per-token log-probs leave the device function; the
teacher's logits never cross the jit boundary and need no host round trip.
Since teacher and reference are frozen and the tokens fixed, their log-probs
are constants of the rollout, so the update step needs no frozen model at all
(GKD, which re-scores full distributions, does: ``frozen=('teacher',)``).

Batch keys (host numpy, then ``[M, b, ...]`` micro-batches on device). Rows
are grouped contiguously, G rows per prompt; L = P + T (left-padded prompt,
then T completion slots). Target-aligned arrays have L-1 columns: column t
refers to ``tokens[:, t+1]``.
  tokens, positions, segment_ids  [B, L] int32 model inputs (segment 0 = pad)
  completion_mask                 [B, L] int32, 1 on sampled tokens (EOS in)
  advantages                      [B] f32 group-relative advantages
  correct                         [B] f32 1 where the rollout is correct
  off_policy                      [B] f32 1 on injected teacher rows (AMPO)
  kd_beta                         [B] f32 β_t of this step (KDRL; rows equal)
  old_logprobs                    [B, L-1] f32, from ``score``
  ref_logprobs                    [B, L-1] f32, from ``score`` (β_ref > 0)
  teacher_logprobs                [B, L-1] f32, from ``score`` (KDRL, OPD)

Legend: M micro-batches, B rows (prompts × G), L length, V vocab, G group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from w2s_jax import losses
from w2s_jax.losses import chunked_logprobs
from w2s_jax.methods import spec as spec_lib

Batch = dict[str, jax.Array]
SCORE_KEYS = ("old_logprobs", "ref_logprobs", "teacher_logprobs")


@dataclasses.dataclass(frozen=True)
class ScoringHparams(spec_lib.Hparams):
  """The scoring knobs every RL method's hyperparameters share.

  Attributes:
    pg_temperature: τ of the scored log-probs log softmax(z/τ) (1 = raw).
    chunked: score from hidden states in vocab chunks, never a [B, L, V]
      array; False: the dense logits (the reference path of the tests).
  """

  pg_temperature: float = 1.0
  chunked: bool = True

  def check(self) -> None:
    super().check()
    self.require("pg_temperature", self.pg_temperature > 0, "> 0")


def _vocab(hp: ScoringHparams) -> int | None:
  return int(hp.vocab_size) or None


def token_stats(
    model, batch: Batch, hp: ScoringHparams, *, entropy: bool = False
) -> tuple[jax.Array, jax.Array | None]:
  """[B, L-1] f32 log π(tokens[:, t+1] | tokens[:, :t+1]) (and entropies).

  ``hp.chunked``: from the final hidden states in vocab chunks
  (``losses.chunked_logprobs``), never a [B, L, V] array; False: the dense
  logits (the reference path of the tests). Both at ``hp.pg_temperature``.
  """
  tau = float(hp.pg_temperature)
  targets = batch["tokens"][:, 1:]
  if hp.chunked:
    h_BLD, _ = model.hidden(
        batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    # A tied embedding is contracted as stored ([V, D]): its transpose
    # would be a weight-sized copy (and so would its gradient's).
    tied = bool(model.cfg.tie_embeddings)
    return chunked_logprobs.chunked_token_logprobs(
        h_BLD[:, :-1],
        model.embed_VD.get_value() if tied else model.unembedding_DV(),
        targets,
        w_layout="VD" if tied else "DV",
        temperature=tau,
        vocab_size=_vocab(hp),
        entropy=entropy,
        chunk_size=int(hp.chunk_size) or None,
    )
  logits_BLV = model(batch["tokens"], batch["positions"], batch["segment_ids"])
  logits_BLV = logits_BLV[:, :-1]
  lp = losses.token_logprobs(
      logits_BLV, targets, temperature=tau, vocab_size=_vocab(hp)
  )
  ent = None
  if entropy:
    ent = losses.token_entropy(
        logits_BLV, temperature=tau, vocab_size=_vocab(hp)
    )
  return lp, ent


def token_logprobs(model, batch: Batch, hp: ScoringHparams) -> jax.Array:
  """[B, L-1] f32 log π(tokens[:, t+1] | tokens[:, :t+1]) of one model."""
  return token_stats(model, batch, hp)[0]


def sampler_mismatch(
    old_lp_BL: jax.Array, batch: Batch, cap: float = 0.0
) -> tuple[jax.Array | None, dict[str, jax.Array]]:
  """TIS weights min(π_train/π_sample, C) and the mismatch metrics.

  ``batch['sample_logprobs']`` holds the sampler's log-probs of its tokens
  (a bf16 copy of the policy, say); π_train is the scored ``old_lp_BL``.
  Rows injected from a teacher (AMPO ``off_policy``) were not sampled: their
  weight is 1 and they are left out of the metrics. Returns (weights [B, L-1]
  or None when the cap C (``rl.tis_cap``) is 0, metrics).
  """
  m = completion_mask(batch) != 0
  if "off_policy" in batch:
    m = m & (batch["off_policy"][:, None] == 0)
  d = jnp.where(m, old_lp_BL - batch["sample_logprobs"], 0.0)
  ratio = jnp.exp(jnp.clip(d, -20.0, 20.0))
  n = jnp.maximum(jnp.sum(m, dtype=jnp.float32), 1.0)
  metrics = {"tis/logprob_abs_diff": jnp.sum(jnp.abs(d)) / n}
  cap = float(cap or 0.0)
  if not cap:
    return None, metrics
  capped = m & (ratio > cap)
  w = jnp.where(m, jnp.minimum(ratio, cap), 1.0)
  metrics["tis/capped_frac"] = jnp.sum(capped, dtype=jnp.float32) / n
  metrics["tis/weight_mean"] = jnp.sum(jnp.where(m, w, 0.0)) / n
  return jax.lax.stop_gradient(w), metrics


def make_score_fn(
    student_graphdef: Any,
    frozen_graphdefs: dict[str, Any],
    hp: ScoringHparams,
    tis_cap: float = 0.0,
) -> Callable[[Any, dict[str, Any], Batch], tuple[Batch, Batch]]:
  """``score(params, frozen, batch) -> (arrays, metrics)``.

  Not jitted here (the trainer jits it once). ``arrays`` holds
  ``old_logprobs`` and, per model in ``frozen`` ('ref', 'teacher'), its
  ``<name>_logprobs``; with ``batch['sample_logprobs']`` the sampler-trainer
  mismatch joins ``metrics`` and, when ``tis_cap`` (``rl.tis_cap``) > 0, the
  TIS weights join ``arrays`` as ``tis_weight``. Everything is under
  ``stop_gradient``; scoring is vocab-chunked unless ``hp.chunked`` is False.
  """

  def score(params, frozen, batch):
    student = nnx.merge(student_graphdef, jax.lax.stop_gradient(params))
    out = {"old_logprobs": token_logprobs(student, batch, hp)}
    for name in ("ref", "teacher"):
      if name in frozen:
        model = nnx.merge(
            frozen_graphdefs[name], jax.lax.stop_gradient(frozen[name])
        )
        out[f"{name}_logprobs"] = token_logprobs(model, batch, hp)
    metrics = {}
    if "sample_logprobs" in batch:
      w, metrics = sampler_mismatch(out["old_logprobs"], batch, tis_cap)
      if w is not None:
        out["tis_weight"] = w
    return out, metrics

  return score


def completion_mask(mb: Batch) -> jax.Array:
  """[..., L-1] mask of the sampled (target-aligned) tokens."""
  return mb["completion_mask"][..., 1:]


def rows(x: jax.Array) -> jax.Array:
  """[M, b, ...] -> [M*b, ...] (row order, hence the groups, preserved)."""
  return x.reshape(-1, *x.shape[2:])
