"""The one jitted train step, and the helpers every method's loss shares.

A method (``w2s_jax.methods``) is a loss on one micro-batch plus the
step-global normalisers it needs. ``make_train_step`` turns it into
``step(train_state, frozen, batch)`` that scans over M micro-batches
(``batch[k]`` is ``[M, b, L]``), sums their gradients (each micro-batch loss
is already divided by the normaliser of the *whole* step, so the sum is the
exact full-batch loss, docs/methods.md, "Aggregation") and applies one optimizer update. The
frozen teacher/reference enter the step as arguments under
``stop_gradient``; only the student (or its LoRA adapters) is differentiated
and donated.

Micro-batching, one convention for both trainers: the host hands the jitted
step a flat ``[B, ...]`` batch and ``flat_step`` splits it into M
micro-batches inside the jit (``split_micro``).

Legend: M micro-batches, B batch, L length, D d_model, V vocab, K cached
top-k entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from w2s_jax import losses, sharding
from w2s_jax.training import lora as lora_lib

Batch = dict[str, jax.Array]


def shifted(mb: Batch, key: str = "tokens"):
  """Inputs and next-token targets with the completion mask of the targets."""
  return mb[key], mb[key][:, 1:], mb["completion_mask"][:, 1:]


def hidden(model, mb: Batch, prefix: str = ""):
  """The final hidden states [b, L-1, D] of the rows predicting tokens 1.."""
  h, _ = model.hidden(
      mb[prefix + "tokens"],
      mb[prefix + "positions"],
      mb[prefix + "segment_ids"],
  )
  return h[:, :-1]


def attention_targets_mask(mb: Batch) -> jax.Array:
  """'attention' mask mode: every real next token inside the same segment."""
  seg = mb["segment_ids"]
  return (seg[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1])


def token_lp(model, mb: Batch, prefix: str, vocab_size: int | None):
  """Log-probs [b, L-1] of each row's next tokens under ``model``."""
  logits = model(
      mb[prefix + "tokens"],
      mb[prefix + "positions"],
      mb[prefix + "segment_ids"],
  )
  return losses.token_logprobs(
      logits[:, :-1], mb[prefix + "tokens"][:, 1:], vocab_size=vocab_size
  )


def token_normalizer(
    batch: Batch, mask_mode: str = "completion"
) -> dict[str, jax.Array]:
  """The step's number of loss tokens (all micro-batches): ``tokens``."""
  mask = batch["completion_mask"][..., 1:]
  if mask_mode == "attention":
    seg = batch["segment_ids"]
    mask = (seg[..., 1:] != 0) & (seg[..., 1:] == seg[..., :-1])
  return {"tokens": jnp.sum(mask != 0, dtype=jnp.float32)}


def config_chunk_size(cfg: Any) -> int | None:
  """loss.chunk_size (a dict or an Hparams); 0 / unset = chosen from V and D
  (losses.chunked)."""
  if isinstance(cfg, Mapping):
    size = cfg.get("chunk_size")
  else:
    size = getattr(cfg, "chunk_size", 0)
  return int(size or 0) or None


def vocab_size(hp: Any) -> int | None:
  """loss.vocab_size of an Hparams: the shared tokenizer's width, or None."""
  return int(hp.vocab_size or 0) or None


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything static the step closes over."""

  method: Any  # a methods.MethodSpec (loss, normalizers, frozen)
  student_graphdef: Any
  frozen_graphdefs: dict[str, Any]
  tx: optax.GradientTransformation
  loss_cfg: Any  # the method's Hparams instance (static under jit)
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


def split_micro(batch: Batch, micro: int, blocks: int = 1) -> Batch:
  """``[B, ...] -> [M, B/M, ...]``, inside the jit.

  The rows arrive as ``blocks`` equal blocks (the offline trainer: one per
  process, each holding its rows of every micro-batch in turn,
  ``inputs.process_rows``; the RL trainer: one block, the global rows in
  order). Micro-batch m is chunk m of every block, so it holds global rows
  ``[m·B/M, (m+1)·B/M)`` either way; its rows are pinned on the batch axes.
  """
  out = {}
  for k, v in batch.items():
    rows = v.shape[0]
    if rows % (micro * blocks):
      raise ValueError(
          f"batch {k!r} of {rows} rows does not split into"
          f" train.micro_batches={micro} x {blocks} process blocks."
      )
    per = rows // (micro * blocks)
    v_PMb = v.reshape(blocks, micro, per, *v.shape[1:])
    v_Mb = jnp.swapaxes(v_PMb, 0, 1).reshape(micro, blocks * per, *v.shape[1:])
    out[k] = sharding.shard(v_Mb, None, "batch", *(None,) * (v.ndim - 1))
  return out


def flat_step(train_step: Callable, micro: int, blocks: int = 1) -> Callable:
  """``train_step`` on a flat ``[B, ...]`` batch (``split_micro`` first)."""

  def step(train_state, frozen, batch):
    return train_step(train_state, frozen, split_micro(batch, micro, blocks))

  return step
