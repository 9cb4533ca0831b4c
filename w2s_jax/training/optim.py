"""The optax chain and learning-rate schedules, from config.

Gradient accumulation is not an optax wrapper here: the train step sums
micro-batch losses that were normalised by the *global* token count of the
optimizer step (docs/methods.md, "Aggregation"), which a mean of per-micro-batch means is not.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> optax.Schedule:
  """Linear warmup from 0, then constant / cosine / linear decay.

  Args:
    lr: peak learning rate.
    total_steps: optimizer steps of the run (decay ends there).
    warmup_steps: steps of linear warmup.
    schedule: 'constant', 'cosine' or 'linear'.
    min_lr_ratio: final lr as a fraction of ``lr`` for the decays.
  """
  if lr < 0:
    raise ValueError(f"learning rate must be >= 0, got {lr}.")
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}.")
  if not 0 <= warmup_steps <= max(total_steps, 0):
    raise ValueError(
        f"warmup_steps ({warmup_steps}) must be in [0, total_steps"
        f" ({total_steps})]."
    )
  decay_steps = max(total_steps - warmup_steps, 1)
  end = lr * min_lr_ratio
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr_ratio)
  else:
    main = optax.linear_schedule(lr, end, decay_steps)
  if warmup_steps == 0:
    return main
  warm = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warm, main], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices only (not on norms' scales or biases)."""
  return jax.tree.map(lambda p: np.ndim(p) >= 2, params)


def make_optimizer(
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping and a warmup schedule.

  Returns:
    The optax transformation and its schedule (for logging the lr).
  """
  sched = make_schedule(lr, total_steps, warmup_steps, schedule, min_lr_ratio)
  parts = []
  if grad_clip and grad_clip > 0:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(
      optax.adamw(
          sched,
          b1=b1,
          b2=b2,
          eps=eps,
          weight_decay=weight_decay,
          mask=decay_mask,
      )
  )
  return optax.chain(*parts), sched


def from_config(
    cfg: Any, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer from a ConfigDict's ``optim`` section."""
  o = cfg
  warmup = int(o.get("warmup_steps", 0))
  if o.get("warmup_frac", 0.0):
    warmup = int(round(float(o.warmup_frac) * total_steps))
  return make_optimizer(
      lr=float(o.lr),
      total_steps=total_steps,
      warmup_steps=warmup,
      schedule=str(o.get("schedule", "cosine")),
      min_lr_ratio=float(o.get("min_lr_ratio", 0.0)),
      b1=float(o.get("b1", 0.9)),
      b2=float(o.get("b2", 0.999)),
      eps=float(o.get("eps", 1e-8)),
      weight_decay=float(o.get("weight_decay", 0.0)),
      grad_clip=float(o.get("grad_clip", 1.0)),
  )
