"""Per-method losses on a micro-batch, and the one jitted train step.

A method is a loss on one micro-batch plus the step-global normalisers it
needs. ``make_train_step`` turns it into ``step(train_state, frozen, batch)``
that scans over M micro-batches (``batch[k]`` is ``[M, b, L]``), sums their
gradients (each micro-batch loss is already divided by the normaliser of the
*whole* step, so the sum is the exact full-batch loss, METHODS §0.3) and
applies one optimizer update. The frozen teacher/reference enter the step as
arguments under ``stop_gradient``; only the student (or its LoRA adapters)
is differentiated and donated.

Adding a method: write a ``Method`` (loss + normalisers) here, register it
in ``METHODS``, and add a config.

Legend: M micro-batches, B batch, L length, D d_model, V vocab, K cached
top-k entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from w2s_jax import losses
from w2s_jax.training import lora as lora_lib

Batch = dict[str, jax.Array]


def _shifted(mb: Batch, key: str = "tokens"):
  """Inputs and next-token targets with the completion mask of the targets."""
  return mb[key], mb[key][:, 1:], mb["completion_mask"][:, 1:]


def _hidden(model, mb: Batch, prefix: str = ""):
  h, _ = model.hidden(
      mb[prefix + "tokens"],
      mb[prefix + "positions"],
      mb[prefix + "segment_ids"],
  )
  return h[:, :-1]


def _attention_targets_mask(mb: Batch) -> jax.Array:
  """'attention' mask mode: every real next token inside the same segment."""
  seg = mb["segment_ids"]
  return (seg[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1])


def _token_lp(model, mb: Batch, prefix: str, vocab_size: int | None):
  logits = model(
      mb[prefix + "tokens"],
      mb[prefix + "positions"],
      mb[prefix + "segment_ids"],
  )
  return losses.token_logprobs(
      logits[:, :-1], mb[prefix + "tokens"][:, 1:], vocab_size=vocab_size
  )


@dataclasses.dataclass(frozen=True)
class Method:
  """A training objective.

  Attributes:
    name: method name (config ``method``).
    loss: ``(student, frozen_models, micro_batch, norms, cfg) -> (loss,
      metrics)``; ``frozen_models`` maps names ('teacher', 'ref') to models.
    normalizers: ``(batch [M, b, ...], cfg) -> dict`` computed once per step.
    frozen: names of frozen models the loss needs.
  """

  name: str
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  normalizers: Callable[[Batch, Any], dict[str, jax.Array]]
  frozen: tuple[str, ...] = ()


def _token_norm(batch: Batch, cfg: Any) -> dict[str, jax.Array]:
  mask = batch["completion_mask"][..., 1:]
  if cfg.get("mask_mode", "completion") == "attention":
    seg = batch["segment_ids"]
    mask = (seg[..., 1:] != 0) & (seg[..., 1:] == seg[..., :-1])
  return {"tokens": jnp.sum(mask != 0, dtype=jnp.float32)}


def _pair_norm(batch: Batch, cfg: Any) -> dict[str, jax.Array]:
  del cfg
  valid = jnp.any(batch["chosen_completion_mask"] != 0, axis=-1) & jnp.any(
      batch["rejected_completion_mask"] != 0, axis=-1
  )
  return {"pairs": jnp.sum(valid, dtype=jnp.float32)}


def config_chunk_size(cfg) -> int | None:
  """loss.chunk_size; 0 / unset = chosen from V and D (losses.chunked)."""
  return int(cfg.get("chunk_size") or 0) or None


def sft_loss(student, frozen, mb, norms, cfg):
  """Completion-only cross-entropy, EOS included (METHODS §1)."""
  del frozen
  _, targets, mask = _shifted(mb)
  h = _hidden(student, mb)
  return losses.chunked_cross_entropy(
      h,
      student.unembedding_DV(),
      targets,
      mask,
      normalizer=norms["tokens"],
      vocab_size=cfg.get("vocab_size") or None,
      chunk_size=config_chunk_size(cfg),
  )


def _kd_mask(mb: Batch, cfg: Any) -> jax.Array:
  if cfg.get("mask_mode", "completion") == "attention":
    return _attention_targets_mask(mb)
  return mb["completion_mask"][:, 1:]


def _kd_kwargs(norms, cfg) -> dict[str, Any]:
  return dict(
      temperature=float(cfg.get("temperature", 1.0)),
      tau_sq=bool(cfg.get("tau_sq", True)),
      beta=float(cfg.get("beta", 0.5)),
      alpha=float(cfg.get("alpha", 0.1)),
      normalizer=norms["tokens"],
      vocab_size=cfg.get("vocab_size") or None,
  )


def _topk_kd(h_s, w_s, ids, lps, mask, norms, cfg, prefix="distill"):
  """Divergence of the student to top-k teacher rows (METHODS §0.1).

  ``ids``/``lps`` ``[B, L-1, K]`` are aligned with ``h_s`` (row t predicts
  token t + 1) and were recorded at ``cfg['teacher_temperature']``
  (default: the loss temperature).
  """
  kw = _kd_kwargs(norms, cfg)
  tau_rec = float(cfg.get("teacher_temperature") or kw["temperature"])
  kw.update(
      mode=str(cfg.get("topk_mode", "tail_bucket")),
      divergence=str(cfg.get("divergence", "fkl")),
      teacher_temperature=tau_rec,
      prefix=prefix,
  )
  if cfg.get("chunked", True):
    return losses.chunked_topk_divergence(
        h_s,
        w_s,
        ids,
        lps,
        mask,
        chunk_size=config_chunk_size(cfg),
        **kw,
    )
  return losses.topk_divergence(
      h_s @ w_s.astype(h_s.dtype), ids, lps, mask, **kw
  )


def distill_loss(student, frozen, mb, norms, cfg):
  """Token-level divergence to a teacher fused into the step (METHODS §7).

  With ``cfg['topk'] = k > 0`` the teacher's live distribution is cut to its
  top k at ``teacher_temperature`` and compared as a top-k cache would be
  (``topk_mode``): the on-the-fly twin of ``distill_cache``. That path forms
  the teacher's [B, L, V] log-probs (it exists as a reference and for small
  vocabularies); the default full-distribution path is vocab-chunked.
  """
  teacher = frozen["teacher"]
  mask = _kd_mask(mb, cfg)
  kw = _kd_kwargs(norms, cfg)
  name = str(cfg.get("divergence", "fkl"))
  h_s = _hidden(student, mb)
  h_t = jax.lax.stop_gradient(_hidden(teacher, mb))
  w_t = jax.lax.stop_gradient(teacher.unembedding_DV())
  k = int(cfg.get("topk", 0) or 0)
  if k:
    zt = h_t @ w_t.astype(h_t.dtype)
    if kw["vocab_size"]:
      zt = zt[..., : kw["vocab_size"]]
    tau_rec = float(cfg.get("teacher_temperature") or kw["temperature"])
    lp_t = jax.nn.log_softmax(zt.astype(jnp.float32) / tau_rec, axis=-1)
    lps, ids = jax.lax.top_k(jax.lax.stop_gradient(lp_t), k)
    return _topk_kd(h_s, student.unembedding_DV(), ids, lps, mask, norms, cfg)
  if cfg.get("chunked", True):
    return losses.chunked_divergence(
        name,
        h_s,
        student.unembedding_DV(),
        h_t,
        w_t,
        mask,
        chunk_size=config_chunk_size(cfg),
        **kw,
    )
  zs = h_s @ student.unembedding_DV().astype(h_s.dtype)
  zt = h_t @ w_t.astype(h_t.dtype)
  return losses.divergence(name, zs, zt, mask, **kw)


def _cached_rows(mb: Batch) -> tuple[jax.Array, jax.Array]:
  """The cached teacher rows predicting tokens 1..L-1 (drop the last)."""
  return (
      mb["teacher_topk_ids"][:, :-1],
      mb["teacher_topk_logprobs"][:, :-1],
  )


def distill_cache_loss(student, frozen, mb, norms, cfg):
  """Offline KD from a teacher top-k cache (METHODS §0.1, §7); no teacher."""
  del frozen
  ids, lps = _cached_rows(mb)
  return _topk_kd(
      _hidden(student, mb),
      student.unembedding_DV(),
      ids,
      lps,
      _kd_mask(mb, cfg),
      norms,
      cfg,
  )


def ssb_loss(student, frozen, mb, norms, cfg):
  """SSB: λ_KD·T²·KL(p_T || q_T) + λ_CE·CE on the reply rows (METHODS §8).

  The teacher rows come from the hinted prompt (a cache written by the
  ``ssb_data`` job, aligned to the student's ``question || reply`` rows);
  both terms are pooled over the step's reply tokens (|M|).
  """
  del frozen
  h = _hidden(student, mb)
  w = student.unembedding_DV()
  _, targets, mask = _shifted(mb)
  ids, lps = _cached_rows(mb)
  lam_kd = float(cfg.get("lambda_kd", 1.0))
  lam_ce = float(cfg.get("lambda_ce", 0.0))
  kd, metrics = _topk_kd(h, w, ids, lps, mask, norms, cfg, prefix="ssb")
  loss = lam_kd * kd
  metrics["ssb/kd_loss"] = metrics.pop("ssb/loss")
  if lam_ce:
    ce, ce_metrics = losses.chunked_cross_entropy(
        h,
        w,
        targets,
        mask,
        normalizer=norms["tokens"],
        vocab_size=cfg.get("vocab_size") or None,
        chunk_size=config_chunk_size(cfg),
        prefix="ssb_ce",
    )
    loss = loss + lam_ce * ce
    metrics["ssb/ce_loss"] = ce_metrics["ssb_ce/loss"]
  metrics["ssb/loss"] = jax.lax.stop_gradient(loss)
  return loss, metrics


def _pair_logprobs(student, mb, cfg):
  vs = cfg.get("vocab_size") or None
  lp_w = _token_lp(student, mb, "chosen_", vs)
  lp_l = _token_lp(student, mb, "rejected_", vs)
  return (
      lp_w,
      mb["chosen_completion_mask"][:, 1:],
      lp_l,
      mb["rejected_completion_mask"][:, 1:],
  )


def redi_loss(student, frozen, mb, norms, cfg):
  """REDI stage 2: −s_w + α·s_l, length-normalised (METHODS §4)."""
  del frozen
  return losses.redi(
      *_pair_logprobs(student, mb, cfg),
      alpha=float(cfg.get("alpha", 0.8)),
      normalizer=norms["pairs"],
  )


def dpo_loss(student, frozen, mb, norms, cfg):
  """DPO against the frozen stage-1 reference (METHODS §4)."""
  lp_w, m_w, lp_l, m_l = _pair_logprobs(student, mb, cfg)
  ref = frozen["ref"]
  vs = cfg.get("vocab_size") or None
  ref_w = jax.lax.stop_gradient(_token_lp(ref, mb, "chosen_", vs))
  ref_l = jax.lax.stop_gradient(_token_lp(ref, mb, "rejected_", vs))
  return losses.dpo(
      lp_w,
      m_w,
      lp_l,
      m_l,
      ref_w,
      ref_l,
      beta=float(cfg.get("beta", 0.1)),
      normalizer=norms["pairs"],
  )


def simpo_loss(student, frozen, mb, norms, cfg):
  """SimPO: −log σ(β(s_w − s_l) − γ) (METHODS §4)."""
  del frozen
  return losses.simpo(
      *_pair_logprobs(student, mb, cfg),
      beta=float(cfg.get("beta", 2.0)),
      gamma=float(cfg.get("gamma", 1.0)),
      normalizer=norms["pairs"],
  )


METHODS: dict[str, Method] = {
    "sft": Method("sft", sft_loss, _token_norm),
    "distill": Method("distill", distill_loss, _token_norm, ("teacher",)),
    "distill_cache": Method("distill_cache", distill_cache_loss, _token_norm),
    "ssb": Method("ssb", ssb_loss, _token_norm),
    "redi": Method("redi", redi_loss, _pair_norm),
    "dpo": Method("dpo", dpo_loss, _pair_norm, ("ref",)),
    "simpo": Method("simpo", simpo_loss, _pair_norm),
}
PAIR_METHODS = ("redi", "dpo", "simpo")
# Methods whose batches carry a teacher top-k cache (inputs.TopKBatches).
CACHE_METHODS = ("distill_cache", "ssb")


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(
        f"unknown method {name!r}; available methods: {sorted(METHODS)}."
    )
  return METHODS[name]


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything static the step closes over."""

  method: Method
  student_graphdef: Any
  frozen_graphdefs: dict[str, Any]
  tx: optax.GradientTransformation
  loss_cfg: Any
  lora_rank: int = 0
  lora_alpha: float = 16.0
  schedule: Callable[[Any], Any] | None = None


def student_state(
    spec: StepSpec, trainable: Any, frozen: dict[str, Any]
) -> Any:
  """The student's parameter state: trainable, or base + LoRA adapters."""
  if spec.lora_rank:
    return lora_lib.merge(
        frozen["base"], trainable, spec.lora_alpha, spec.lora_rank
    )
  return trainable


def _reduce_metric(name: str, v_M: jax.Array) -> jax.Array:
  """Across micro-batches: losses (already divided by the step-global
  normaliser) and counts add up; other diagnostics are averaged."""
  leaf = name.rsplit("/", 1)[-1]
  if leaf == "loss" or leaf.endswith("_loss") or leaf.startswith("num_"):
    return jnp.sum(v_M)
  return jnp.mean(v_M)


def make_train_step(spec: StepSpec) -> Callable:
  """``(train_state, frozen, batch) -> (train_state, metrics)``, not jitted.

  ``train_state = {'params': trainable, 'opt': opt_state, 'step': int32}``;
  ``frozen`` holds the frozen models' states (and 'base' under LoRA).
  """

  def micro_loss(trainable, frozen, mb, norms):
    student = nnx.merge(
        spec.student_graphdef, student_state(spec, trainable, frozen)
    )
    frozen_models = {
        name: nnx.merge(
            spec.frozen_graphdefs[name], jax.lax.stop_gradient(frozen[name])
        )
        for name in spec.method.frozen
    }
    return spec.method.loss(student, frozen_models, mb, norms, spec.loss_cfg)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(train_state, frozen, batch):
    trainable = train_state["params"]
    norms = spec.method.normalizers(batch, spec.loss_cfg)

    def body(acc, mb):
      (loss, metrics), grads = grad_fn(trainable, frozen, mb, norms)
      acc = jax.tree.map(jnp.add, acc, grads)
      return acc, (loss, metrics)

    if jax.tree.leaves(batch)[0].shape[0] == 1:
      # One micro-batch: no accumulator (zeros the size of the parameters,
      # written and re-read every step) and no loop around it.
      mb = jax.tree.map(lambda x: x[0], batch)
      (loss, metrics), grads = grad_fn(trainable, frozen, mb, norms)
      loss_M, metrics_M = jax.tree.map(lambda v: v[None], (loss, metrics))
    else:
      zeros = jax.tree.map(jnp.zeros_like, trainable)
      grads, (loss_M, metrics_M) = jax.lax.scan(body, zeros, batch)
    updates, opt = spec.tx.update(grads, train_state["opt"], trainable)
    new_params = optax.apply_updates(trainable, updates)
    metrics = {k: _reduce_metric(k, v) for k, v in metrics_M.items()}
    metrics["train/loss"] = jnp.sum(loss_M)
    metrics["train/grad_norm"] = optax.global_norm(grads)
    metrics["train/param_norm"] = optax.global_norm(new_params)
    if spec.schedule is not None:
      metrics["train/lr"] = spec.schedule(train_state["step"])
    new_state = {
        "params": new_params,
        "opt": opt,
        "step": train_state["step"] + 1,
    }
    return new_state, metrics

  return step
