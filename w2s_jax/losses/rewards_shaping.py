"""Reward-side building blocks of the GRPO family (docs/methods.md, "GRPO" / "AMPO").

  group_advantages         A = r − mean_group(r), optionally / (std + eps)
                           (GRPO: std with ddof=1; Dr.GRPO and AMPO: no std)
  overlong_penalty         DAPO soft overlong punishment
  dynamic_sampling_filter  DAPO: keep groups whose rewards are not constant
  ampo_guidance            AMPO: which failed rollouts to replace by teacher
                           solutions (only when the whole group failed)

All are pure, jittable and shape-static; the host loop decides how to use
them (e.g. keep sampling until enough groups survive the filter).

Shape legend: N prompts, G rollouts per prompt (group), T stored teacher
solutions per prompt.
"""

import jax
import jax.numpy as jnp

from w2s_jax.losses import aggregation


def group_advantages(
    rewards_NG: jax.Array,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> jax.Array:
  """Group-relative advantages over the last axis (DeepSeekMath GRPO).

  A = r − mean_group(r); with `normalize_std`, A / (std_group(r, ddof=1) +
  eps). A group with constant rewards gets A = 0 exactly (tested for equality,
  so rounding in the mean cannot be amplified by 1/eps).

  Args:
    rewards_NG: [..., G] rewards, one group per row.
    normalize_std: divide by the group std (GRPO); False for Dr.GRPO/AMPO.
    eps: added to the std (1e-6 as verl; TRL uses 1e-4).

  Returns:
    [..., G] f32 advantages, zero-mean per group.
  """
  r = jnp.asarray(rewards_NG, jnp.float32)
  if r.ndim < 1:
    raise ValueError("rewards_NG must be [..., G] with a group axis.")
  g = r.shape[-1]
  if normalize_std and g < 2:
    raise ValueError(
        f"rewards_NG has group size G={g}; the ddof=1 std needs G >= 2. Sample"
        " more rollouts per prompt or pass normalize_std=False."
    )
  if aggregation.is_static_number(eps) and eps < 0:
    raise ValueError(f"eps must be >= 0; got {eps}.")
  centered = r - jnp.mean(r, axis=-1, keepdims=True)
  constant = jnp.max(r, -1, keepdims=True) == jnp.min(r, -1, keepdims=True)
  if normalize_std:
    std = jnp.sqrt(jnp.sum(centered**2, axis=-1, keepdims=True) / (g - 1))
    centered = centered / (std + eps)
  return jnp.where(constant, 0.0, centered)


def overlong_penalty(
    lengths: jax.Array,
    *,
    max_len: int = 20480,
    buffer_len: int = 4096,
    factor: float = 1.0,
) -> jax.Array:
  """DAPO soft overlong punishment, added to the reward.

  min(−(|y| − (L_max − L_buf)) / L_buf · f, 0): zero up to L_max − L_buf,
  then linear down to −f at L_max (and beyond, for truncated responses).

  Args:
    lengths: [...] response lengths |y| in tokens.
    max_len: L_max, the generation budget.
    buffer_len: L_buf, the length of the penalty ramp.
    factor: f, the penalty at L_max.

  Returns:
    [...] f32 penalties ≤ 0.
  """
  if not 0 < buffer_len <= max_len:
    raise ValueError(
        f"buffer_len must lie in (0, max_len={max_len}]; got {buffer_len}."
    )
  if aggregation.is_static_number(factor) and factor < 0:
    raise ValueError(f"factor must be >= 0; got {factor}.")
  excess = jnp.asarray(lengths, jnp.float32) - float(max_len - buffer_len)
  return jnp.minimum(-excess / float(buffer_len) * factor, 0.0)


def dynamic_sampling_filter(scores_NG: jax.Array) -> jax.Array:
  """DAPO dynamic sampling: True for groups whose scores are not all equal.

  With accuracies in {0, 1} this drops the all-wrong and all-right groups,
  whose GRPO advantages (and gradients) are zero.

  Args:
    scores_NG: [..., G] accuracies or rewards per rollout.

  Returns:
    [...] bool keep mask.
  """
  s = jnp.asarray(scores_NG)
  return jnp.max(s, axis=-1) != jnp.min(s, axis=-1)


def ampo_guidance(
    correct_NG: jax.Array,
    teacher_scores_NT: jax.Array,
    key: jax.Array,
    *,
    teacher_valid_NT: jax.Array | None = None,
    max_teachers: int = 2,
) -> tuple[jax.Array, jax.Array]:
  """AMPO: replace failed rollouts by teacher solutions on total failure.

  Only groups with no correct rollout receive guidance: k = min(#valid
  teachers, max_teachers) random rollout slots take the solutions of the k
  best-scored teachers (the caller sets their reward to 1 and marks their
  tokens off-policy). The group size stays G.

  Args:
    correct_NG: [N, G] bool, rollout correct (AMPO: r > 0.6).
    teacher_scores_NT: [N, T] teacher scores (AMPO: 0.9·scoreB + 0.1·format,
      scoreB = the student's mean probability of the gold answer given that
      teacher's reasoning).
    key: PRNG key choosing the replaced slots.
    teacher_valid_NT: [N, T] bool, a stored solution exists (default: all).
    max_teachers: at most this many injections per group (AMPO: 2).

  Returns:
    (inject_NG bool, teacher_index_NG int32 with −1 where not injected).
  """
  correct = jnp.asarray(correct_NG) != 0
  scores = jnp.asarray(teacher_scores_NT, jnp.float32)
  n, g = correct.shape
  if scores.ndim != 2 or scores.shape[0] != n:
    raise ValueError(
        f"teacher_scores_NT has shape {tuple(scores.shape)}; expected (N={n},"
        " T)."
    )
  t = scores.shape[1]
  valid = (
      jnp.ones((n, t), bool)
      if teacher_valid_NT is None
      else jnp.asarray(teacher_valid_NT) != 0
  )
  if valid.shape != scores.shape:
    raise ValueError(
        f"teacher_valid_NT shape {tuple(valid.shape)} must equal"
        f" teacher_scores_NT shape {tuple(scores.shape)}."
    )
  if not isinstance(max_teachers, int) or max_teachers < 1:
    raise ValueError(f"max_teachers must be an int >= 1; got {max_teachers!r}.")
  slots = min(max_teachers, t, g)
  need = ~jnp.any(correct, axis=-1)
  k = jnp.where(need, jnp.minimum(jnp.sum(valid, -1), slots), 0)
  # Best teachers first; invalid ones sort last.
  order = jnp.argsort(-jnp.where(valid, scores, -jnp.inf), axis=-1)[:, :slots]
  perm = jnp.argsort(jax.random.uniform(key, (n, g)), axis=-1)[:, :slots]
  use = jnp.arange(slots)[None, :] < k[:, None]
  rows = jnp.arange(n)[:, None]
  inject = jnp.zeros((n, g), bool).at[rows, perm].set(use)
  teacher = jnp.full((n, g), -1, jnp.int32)
  teacher = teacher.at[rows, perm].set(jnp.where(use, order, -1))
  return inject, teacher
