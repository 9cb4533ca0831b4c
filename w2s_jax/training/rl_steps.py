"""RL methods: the jitted scoring step and the per-micro-batch RL losses.

One RL step is rollouts (host, ``rollouts.py``) -> ``score`` (one jitted
call) -> ``rl.updates_per_rollout`` clipped updates through the generic
``steps.make_train_step`` with the ``Method``s registered here in
``RL_METHODS``.

``make_score_fn`` returns ``score(params, frozen, batch)``: in ONE jitted
function, the student's log-probs of its own sampled tokens (π_old of the
clipped ratio, fixed for all updates of the rollout), the reference's
(``frozen['ref']``, when β_ref > 0) and the teacher's (``frozen['teacher']``,
KDRL). Only ``[B, L-1]`` per-token log-probs leave the device function; the
teacher's logits never cross the jit boundary and need no host round trip.
Since teacher and reference are frozen and the tokens fixed, their log-probs
are constants of the rollout, so the update step needs no frozen model at all
(GKD, which re-scores full distributions, does: ``frozen=('teacher',)``).

Methods (``config.method``; options in ``config.loss``):
  * ``grpo``: GRPO / Dr.GRPO / DAPO by options (``agg``, ``epsilon_low``,
    ``epsilon_high``, ``dual_clip``, ``beta_ref``, ``kl_estimator``), METHODS
    §5; with ``kd=True`` it is KDRL (§6).
  * ``kdrl``: the same loss with the β_KD term always on: ``kd_estimator``
    'k2' (default) / 'k3' / 'k1' (as a reward), ``kd_masking``
    'none' / 'response' / 'group', β_t = max(kd_beta_init − kd_beta_decay·t,
    kd_beta_min) (decay 0: constant).
  * ``ampo``: PPO-clip on on-policy tokens, −A·p/(p+γ) on injected teacher
    tokens, entropy bonus, Σ/(N·L_max) (§9).
  * ``gkd``: JSD(β) to the fused teacher on student samples or data (§7),
    ``steps.distill_loss`` with ``divergence='jsd'``.

Batch keys (host numpy, then ``[M, b, ...]`` micro-batches on device). Rows
are grouped contiguously, G rows per prompt; L = P + T (left-padded prompt,
then T completion slots). Target-aligned arrays have L-1 columns: column t
refers to ``tokens[:, t+1]``.
  tokens, positions, segment_ids  [B, L] int32 model inputs (segment 0 = pad)
  completion_mask                 [B, L] int32, 1 on sampled tokens (EOS in)
  advantages                      [B] f32 group-relative advantages
  correct                         [B] f32 1 where the rollout is correct
  off_policy                      [B] f32 1 on injected teacher rows (AMPO)
  kd_beta                         [B] f32 β_t of this step (every row equal)
  old_logprobs                    [B, L-1] f32, from ``score``
  ref_logprobs                    [B, L-1] f32, from ``score`` (β_ref > 0)
  teacher_logprobs                [B, L-1] f32, from ``score`` (KDRL)

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
from w2s_jax.methods import kd
from w2s_jax.training import steps

Batch = dict[str, jax.Array]
SCORE_KEYS = ("old_logprobs", "ref_logprobs", "teacher_logprobs")


def _vocab(cfg: Any) -> int | None:
  return int(cfg.get("vocab_size") or 0) or None


def _chunked(cfg: Any) -> bool:
  return bool(cfg.get("chunked", True))


def token_stats(
    model, batch: Batch, cfg: Any, *, entropy: bool = False
) -> tuple[jax.Array, jax.Array | None]:
  """[B, L-1] f32 log π(tokens[:, t+1] | tokens[:, :t+1]) (and entropies).

  ``cfg['chunked']`` (default True): from the final hidden states in vocab
  chunks (``losses.chunked_logprobs``), never a [B, L, V] array; False: the
  dense logits (the reference path of the tests). Both at
  ``cfg['pg_temperature']``.
  """
  tau = float(cfg.get("pg_temperature", 1.0))
  targets = batch["tokens"][:, 1:]
  if _chunked(cfg):
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
        vocab_size=_vocab(cfg),
        entropy=entropy,
        chunk_size=steps.config_chunk_size(cfg),
    )
  logits_BLV = model(batch["tokens"], batch["positions"], batch["segment_ids"])
  logits_BLV = logits_BLV[:, :-1]
  lp = losses.token_logprobs(
      logits_BLV, targets, temperature=tau, vocab_size=_vocab(cfg)
  )
  ent = None
  if entropy:
    ent = losses.token_entropy(
        logits_BLV, temperature=tau, vocab_size=_vocab(cfg)
    )
  return lp, ent


def token_logprobs(model, batch: Batch, cfg: Any) -> jax.Array:
  """[B, L-1] f32 log π(tokens[:, t+1] | tokens[:, :t+1]) of one model."""
  return token_stats(model, batch, cfg)[0]


def tis_cap(cfg: Any) -> float:
  """C of the truncated importance weights (0: off)."""
  return float(cfg.get("tis_cap", 0.0) or 0.0)


def sampler_mismatch(
    old_lp_BL: jax.Array, batch: Batch, cfg: Any
) -> tuple[jax.Array | None, dict[str, jax.Array]]:
  """TIS weights min(π_train/π_sample, C) and the mismatch metrics.

  ``batch['sample_logprobs']`` holds the sampler's log-probs of its tokens
  (a bf16 copy of the policy, say); π_train is the scored ``old_lp_BL``.
  Rows injected from a teacher (AMPO ``off_policy``) were not sampled: their
  weight is 1 and they are left out of the metrics. Returns (weights [B, L-1]
  or None when ``tis_cap`` is 0, metrics).
  """
  m = _mask(batch) != 0
  if "off_policy" in batch:
    m = m & (batch["off_policy"][:, None] == 0)
  d = jnp.where(m, old_lp_BL - batch["sample_logprobs"], 0.0)
  ratio = jnp.exp(jnp.clip(d, -20.0, 20.0))
  n = jnp.maximum(jnp.sum(m, dtype=jnp.float32), 1.0)
  metrics = {"tis/logprob_abs_diff": jnp.sum(jnp.abs(d)) / n}
  cap = tis_cap(cfg)
  if not cap:
    return None, metrics
  capped = m & (ratio > cap)
  w = jnp.where(m, jnp.minimum(ratio, cap), 1.0)
  metrics["tis/capped_frac"] = jnp.sum(capped, dtype=jnp.float32) / n
  metrics["tis/weight_mean"] = jnp.sum(jnp.where(m, w, 0.0)) / n
  return jax.lax.stop_gradient(w), metrics


def make_score_fn(
    student_graphdef: Any, frozen_graphdefs: dict[str, Any], loss_cfg: Any
) -> Callable[[Any, dict[str, Any], Batch], tuple[Batch, Batch]]:
  """``score(params, frozen, batch) -> (arrays, metrics)``.

  Not jitted here (the trainer jits it once). ``arrays`` holds
  ``old_logprobs`` and, per model in ``frozen`` ('ref', 'teacher'), its
  ``<name>_logprobs``; with ``batch['sample_logprobs']`` the sampler-trainer
  mismatch joins ``metrics`` and, when ``loss.tis_cap`` > 0, the TIS weights
  join ``arrays`` as ``tis_weight``. Everything is under ``stop_gradient``;
  scoring is vocab-chunked unless ``loss.chunked`` is False.
  """

  def score(params, frozen, batch):
    student = nnx.merge(student_graphdef, jax.lax.stop_gradient(params))
    out = {"old_logprobs": token_logprobs(student, batch, loss_cfg)}
    for name in ("ref", "teacher"):
      if name in frozen:
        model = nnx.merge(
            frozen_graphdefs[name], jax.lax.stop_gradient(frozen[name])
        )
        out[f"{name}_logprobs"] = token_logprobs(model, batch, loss_cfg)
    metrics = {}
    if "sample_logprobs" in batch:
      w, metrics = sampler_mismatch(out["old_logprobs"], batch, loss_cfg)
      if w is not None:
        out["tis_weight"] = w
    return out, metrics

  return score


def _mask(mb: Batch) -> jax.Array:
  return mb["completion_mask"][..., 1:]


def _rows(x: jax.Array) -> jax.Array:
  """[M, b, ...] -> [M*b, ...] (row order, hence the groups, preserved)."""
  return x.reshape(-1, *x.shape[2:])


def _max_len(cfg: Any) -> int | None:
  return int(cfg.get("max_len", 0) or 0) or None


def _kd_keep(correct_B: jax.Array, cfg: Any) -> jax.Array:
  return losses.kd_keep_mask(
      correct_B,
      str(cfg.get("kd_masking", "none")),
      int(cfg.get("group_size", 1)),
      correct_B.shape[0],
  )


def rl_normalizers(batch: Batch, cfg: Any) -> dict[str, jax.Array]:
  """Step-global normalisers over all micro-batches (METHODS §0.3).

  'pg' for the policy loss (its ``agg``), 'tokens' (entropy token-mean) and
  'kd' = Σ mask·keep (the KDRL term, token-mean over kept tokens).
  """
  m = _rows(_mask(batch)) != 0
  agg = str(cfg.get("agg", "token-mean"))
  out = {
      "pg": losses.normalizer(m, agg, _max_len(cfg)),
      "tokens": jnp.sum(m, dtype=jnp.float32),
  }
  if _kd_on(cfg):
    keep = _kd_keep(_rows(batch["correct"]), cfg)
    kd_m = m & keep[:, None]
    out["kd"] = losses.normalizer(
        kd_m, str(cfg.get("kd_agg", "token-mean")), _max_len(cfg)
    )
  return out


def _kd_on(cfg: Any) -> bool:
  return bool(cfg.get("kd", False))


def _grpo_kwargs(mb: Batch, norms, cfg: Any) -> dict[str, Any]:
  dual = float(cfg.get("dual_clip", 0.0) or 0.0)
  beta_ref = float(cfg.get("beta_ref", 0.0))
  return dict(
      old_tok_lp_BL=mb["old_logprobs"],
      ref_tok_lp_BL=mb.get("ref_logprobs"),
      is_weight_BL=mb.get("tis_weight"),
      beta_ref=beta_ref,
      kl_estimator=str(cfg.get("kl_estimator", "k3")),
      epsilon_low=float(cfg.get("epsilon_low", 0.2)),
      epsilon_high=float(cfg.get("epsilon_high", cfg.get("epsilon_low", 0.2))),
      dual_clip=dual if dual > 0 else None,
      agg=str(cfg.get("agg", "token-mean")),
      normalizer=norms["pg"],
      max_len=_max_len(cfg),
  )


def grpo_loss(student, frozen, mb, norms, cfg):
  """GRPO/Dr.GRPO/DAPO clipped loss; + β_t·KD when ``kd`` (KDRL)."""
  del frozen
  tok_lp = token_logprobs(student, mb, cfg)
  mask = _mask(mb)
  kw = _grpo_kwargs(mb, norms, cfg)
  if not _kd_on(cfg):
    return losses.grpo_loss(tok_lp, mb["advantages"], mask, **kw)
  return losses.kdrl_loss(
      tok_lp,
      mb["teacher_logprobs"],
      mb["advantages"],
      mask,
      # β_t rides in the batch (one value per row) so that annealing needs
      # neither a recompile nor the step counter inside the loss.
      beta=mb["kd_beta"][0],
      estimator=str(cfg.get("kd_estimator", "k2")),
      kd_masking=str(cfg.get("kd_masking", "none")),
      correct_B=mb["correct"],
      group_size=int(cfg.get("group_size", 1)),
      kd_agg=str(cfg.get("kd_agg", "token-mean")),
      kd_normalizer=norms["kd"],
      kd_max_len=_max_len(cfg),
      **kw,
  )


def ampo_loss(student, frozen, mb, norms, cfg):
  """AMPO: clip on-policy, p/(p+γ) on injected rows, entropy bonus (§9)."""
  del frozen
  coef = float(cfg.get("entropy_coef", 0.001))
  tok_lp, ent = token_stats(student, mb, cfg, entropy=bool(coef))
  eps = float(cfg.get("epsilon_low", 0.2))
  dual = float(cfg.get("dual_clip", 10.0) or 0.0)
  return losses.ampo_loss(
      tok_lp,
      mb["advantages"],
      _mask(mb),
      mb["off_policy"],
      old_tok_lp_BL=mb["old_logprobs"],
      is_weight_BL=mb.get("tis_weight"),
      entropy_BL=ent,
      entropy_coef=coef,
      gamma=float(cfg.get("off_policy_gamma", 0.1)),
      epsilon=eps,
      dual_clip=dual if dual > 0 else None,
      agg=str(cfg.get("agg", "seq-mean-token-sum-norm")),
      normalizer=norms["pg"],
      max_len=_max_len(cfg),
      entropy_normalizer=norms["tokens"],
  )


def _gkd_norm(batch: Batch, cfg: Any) -> dict[str, jax.Array]:
  del cfg
  return {"tokens": jnp.sum(_mask(batch) != 0, dtype=jnp.float32)}


def gkd_loss(student, frozen, mb, norms, cfg):
  """GKD: token-mean JSD(β) to the fused teacher (``steps.distill_loss``)."""
  if str(cfg.get("divergence", "jsd")) != "jsd":
    raise ValueError(
        f"gkd needs loss.divergence='jsd', got {cfg.get('divergence')!r}; use"
        " configs/distill.py for other divergences."
    )
  keys = kd.DistillHparams.keys()
  hp = kd.DistillHparams(**{k: cfg[k] for k in keys if k in cfg})
  return kd.distill_loss(
      student, frozen, mb, norms, hp.replace(divergence="jsd")
  )


@dataclasses.dataclass(frozen=True)
class Method:
  """An RL method's loss, normalisers and frozen models (``StepSpec.method``)."""

  name: str
  loss: Callable[..., Any]
  normalizers: Callable[..., Any]
  frozen: tuple[str, ...] = ()


RL_METHODS: dict[str, Method] = {
    "grpo": Method("grpo", grpo_loss, rl_normalizers),
    "kdrl": Method("kdrl", grpo_loss, rl_normalizers),
    "ampo": Method("ampo", ampo_loss, rl_normalizers),
    "gkd": Method("gkd", gkd_loss, _gkd_norm, ("teacher",)),
}
# Methods whose batches are G rollouts per prompt with advantages.
POLICY_METHODS = ("grpo", "kdrl", "ampo")


def get_method(name: str) -> Method:
  """The RL ``Method`` named by ``config.method``."""
  if name not in RL_METHODS:
    raise ValueError(
        f"unknown RL method {name!r} for job 'rl'; available:"
        f" {sorted(RL_METHODS)} (set config.method)."
    )
  return RL_METHODS[name]


def score_needs(method: str, loss_cfg: Any) -> tuple[str, ...]:
  """Frozen models the scoring step uses for ``method``."""
  if method not in POLICY_METHODS:
    return ()
  need = []
  if float(loss_cfg.get("beta_ref", 0.0)) > 0:
    need.append("ref")
  if method == "kdrl" or _kd_on(loss_cfg):
    need.append("teacher")
  return tuple(need)
