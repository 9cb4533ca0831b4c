"""RL graders and their worker processes; no JAX at import time.

The rollouts grade decoded completions on the host. A grader can hang
(SymPy on ``9^{9^{9^9}}``) or raise, so by default it runs in worker
processes with a deadline per completion (``evals.worker_pool``): a
completion whose grader raises or runs past ``rl.reward_timeout_s`` scores
as wrong, is counted, and the run continues; a hung worker is killed at the
deadline and replaced.

This module is what a worker imports (graders are pickled by reference), so
it and everything it imports at module level stay free of JAX and Flax: a
worker starts in a fraction of a second instead of paying a JAX import.
``make_reward_pool`` also keeps the workers from re-importing the trainer's
``__main__`` module (which does import JAX); see ``_main_not_reimported``.

Graders take ``(completion, gold)`` and return a float; ``gold`` is what
``rollouts.Roller`` builds per reward kind:

  synthetic_correct   gold = (problem spec, style)
  math_correct        gold = (task 'gsm8k'|'math', answer text)
  rl.reward_fn        gold = the problem's ``gold`` (a user function)
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from w2s_jax.data import synthetic
from w2s_jax.evals import rewards as rewards_lib
from w2s_jax.evals import worker_pool

REWARDS = ("correct", "surrogate", "format", "ampo", "fn")
# Worker processes by default: the issue asks for graders with deadlines.
DEFAULT_WORKERS = 2
MODULE = __name__


def synthetic_correct(completion: str, gold: tuple[str, str]) -> float:
  """1.0 iff the synthetic-task completion reaches the answer of ``gold``.

  Args:
    completion: decoded completion.
    gold: (problem spec, style).

  Returns:
    1.0 or 0.0.
  """
  spec, style = gold
  return float(
      synthetic.grade(synthetic.Problem.from_spec(spec), completion, style)
  )


def math_correct(completion: str, gold: tuple[str, str]) -> float:
  """1.0 iff the completion's answer matches ``gold``.

  Args:
    completion: decoded completion.
    gold: (task 'gsm8k'|'math', gold answer text).

  Returns:
    1.0 or 0.0.
  """
  task, answer = gold
  grade = rewards_lib.grade_completions(
      [completion], [answer], task=task, use_math_verify=False
  )[0]
  return float(grade.correct)


def load_reward_fn(spec: str) -> Callable[[str, Any], float]:
  """``'package.module:function'`` -> the function (top-level, picklable).

  Raises:
    ValueError: a malformed spec, a function in ``__main__`` (workers could
      not import it), or one that cannot be imported.
  """
  module, _, name = spec.partition(":")
  if not module or not name:
    raise ValueError(
        f"rl.reward_fn={spec!r} must be 'package.module:function' (a top-level"
        " function fn(completion, gold) -> float)."
    )
  if module == "__main__":
    raise ValueError(
        f"rl.reward_fn={spec!r}: reward workers cannot import '__main__';"
        " put the function in an importable module."
    )
  try:
    fn = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(
        f"rl.reward_fn={spec!r} cannot be imported ({e}); make the module"
        " importable (PYTHONPATH) and the function top-level."
    ) from e
  return fn


def grader_for(
    reward: str, task: str, reward_fn: str = ""
) -> Callable[[str, Any], float]:
  """The correctness grader of ``rl.reward`` / ``rl.task`` / ``rl.reward_fn``.

  Raises:
    ValueError: an unknown reward, or ``reward='fn'`` without a function.
  """
  if reward not in REWARDS:
    raise ValueError(f"rl.reward={reward!r}: choose one of {REWARDS}.")
  if reward == "fn":
    if not reward_fn:
      raise ValueError("rl.reward='fn' needs rl.reward_fn='module:function'.")
    return load_reward_fn(reward_fn)
  return synthetic_correct if task == "synthetic" else math_correct


def has_answer(text: str, task: str, style: str) -> bool:
  """Whether ``text`` states a final answer in the task's format."""
  if task == "synthetic":
    return synthetic.answer_of(text, style) is not None
  return rewards_lib.format_answer(text) is not None


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
  """Spawned children skip re-importing the parent's ``__main__``.

  ``spawn`` re-imports the main module in every child (by name under
  ``python -m w2s_jax.main``, by path for a script); the trainer's main
  imports JAX, which would cost each worker seconds. Graders are top-level
  functions of importable modules (``load_reward_fn`` refuses
  ``__main__``), so the children never need it. Only pool start-up and
  ``map`` (which spawns the replacement of a killed worker) run inside this
  context, on the single host thread that owns the pool.
  """
  main = sys.modules.get("__main__")
  if main is None:
    yield
    return
  missing = object()
  saved = {a: getattr(main, a, missing) for a in ("__spec__", "__file__")}
  main.__spec__ = None
  if saved["__file__"] is not missing:
    del main.__file__
  try:
    yield
  finally:
    for attr, value in saved.items():
      if value is not missing:
        setattr(main, attr, value)


def make_reward_pool(
    num_workers: int,
    timeout_s: float,
    *,
    reward_fn: str = "",
    memory_limit_mb: int | None = 4096,
) -> worker_pool.WorkerPool | None:
  """Worker processes for the graders; None when ``num_workers == 0``.

  Args:
    num_workers: processes (``rl.reward_workers``); 0 grades in-process,
      without deadlines.
    timeout_s: deadline per completion (``rl.reward_timeout_s``).
    reward_fn: ``rl.reward_fn``; its module is imported at worker start so
      that the import is not charged to the first completion's deadline.
    memory_limit_mb: address-space limit per worker.

  Raises:
    ValueError: ``num_workers < 0`` or ``timeout_s <= 0``.
  """
  if num_workers < 0:
    raise ValueError(
        f"rl.reward_workers={num_workers} must be >= 0 (0 = in-process)."
    )
  if not timeout_s > 0:
    raise ValueError(f"rl.reward_timeout_s={timeout_s} must be > 0 seconds.")
  if num_workers == 0:
    return None
  preload = [MODULE]
  if reward_fn:
    preload.append(reward_fn.partition(":")[0])
  with _main_not_reimported():
    return worker_pool.WorkerPool(
        num_workers,
        timeout_s=timeout_s,
        preload=tuple(preload),
        memory_limit_mb=memory_limit_mb,
    )


def grade(
    fn: Callable[[str, Any], float],
    texts: Sequence[str],
    golds: Sequence[Any],
    *,
    pool: worker_pool.WorkerPool | None = None,
    timeout_s: float | None = None,
    stats: rewards_lib.RewardStats | None = None,
) -> np.ndarray:
  """``fn(text, gold)`` per completion; a failure scores 0.

  Args:
    fn: a grader (top-level, picklable when ``pool`` is given).
    texts: decoded completions.
    golds: one gold per completion.
    pool: worker processes (deadline per completion); None: in-process,
      exceptions caught, no deadline.
    timeout_s: deadline per completion; default: the pool's.
    stats: failure/outcome counters, updated in place.

  Returns:
    float32 ``[len(texts)]``.
  """
  if pool is None:
    return rewards_lib.apply_reward_fn(
        fn, texts, golds, wrong_reward=0.0, stats=stats
    )
  # A worker killed at its deadline is replaced (spawned) inside ``map``.
  with _main_not_reimported():
    return rewards_lib.apply_reward_fn(
        fn,
        texts,
        golds,
        pool=pool,
        timeout_s=timeout_s,
        wrong_reward=0.0,
        stats=stats,
    )
