"""Sample-based accuracy metrics: pass@k, maj@k, and Reasoning Gap Recovered.

docs/methods.md, "Grading" / "W2SR" Host-side NumPy (float64); nothing here touches JAX.

pass@k (Chen et al., arXiv 2107.03374): with n >= k samples of which c are
correct, the probability that a uniformly random k-subset holds at least one
correct sample is::

  pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

(and 1 when n - c < k). The product form avoids the huge binomials. Averaged
over problems; report n alongside it. pass@1 is c / n, not "the first sample".

maj@k: the answers of k samples (None dropped) are grouped by an equivalence
relation; the largest group wins, ties going to the group whose first member
comes earliest in sample order; the vote is correct iff the winner's answer
matches gold. Groups are built greedily in sample order: a sample joins the
first group whose *first* member it equals (an answer-equivalence checker
need not be transitive, so the representative is fixed). With n > k, maj@k is
averaged over fixed subsets: the n // k disjoint consecutive blocks by
default, or ``num_subsets`` random k-subsets from a seeded generator.

RGR (W2SR, arXiv 2505.20072)::

  RGR = (Acc_W2SR - Acc_student) / (Acc_RL - Acc_student)

undefined (NaN) when RL did not move the student (|denominator| < eps).

Shape suffixes: P problems, N samples per problem.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


def _check_counts(n: int, c: int, k: int) -> None:
  if n < 1:
    raise ValueError(f"num_samples must be >= 1, got {n}.")
  if not 0 <= c <= n:
    raise ValueError(
        f"num_correct must be in [0, num_samples={n}], got {c}; count correct"
        " samples per problem."
    )
  if not 1 <= k <= n:
    raise ValueError(
        f"k must be in [1, num_samples={n}], got {k}; pass@k needs at least k"
        " samples per problem (sample more, or lower k)."
    )


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """Unbiased pass@k of one problem (product form).

  Args:
    num_samples: n, samples drawn for the problem.
    num_correct: c, how many of them are correct.
    k: Subset size, 1 <= k <= n.

  Returns:
    The estimate in [0, 1].
  """
  n, c, k = int(num_samples), int(num_correct), int(k)
  _check_counts(n, c, k)
  if n - c < k:
    return 1.0
  i = np.arange(n - c + 1, n + 1, dtype=np.float64)
  return float(1.0 - np.prod(1.0 - k / i))


def mean_pass_at_k(
    num_samples: Sequence[int] | np.ndarray,
    num_correct: Sequence[int] | np.ndarray,
    k: int,
) -> float:
  """pass@k averaged over problems (each with its own n_i >= k)."""
  n = np.asarray(num_samples).reshape(-1)
  c = np.asarray(num_correct).reshape(-1)
  if n.shape != c.shape or n.size == 0:
    raise ValueError(
        "num_samples and num_correct need the same non-zero length (one entry"
        f" per problem), got {n.shape} and {c.shape}."
    )
  return float(np.mean([pass_at_k(a, b, k) for a, b in zip(n, c, strict=True)]))


def pass_at_k_table(
    correct_PN: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
) -> dict[str, float]:
  """``{"pass@k": value}`` for every k <= n from a [problems, samples] grid.

  Args:
    correct_PN: bool, ``correct_PN[p, s]`` is sample s of problem p correct.
    ks: Candidate k values; those above n are skipped.

  Returns:
    Mean pass@k per k, plus ``"n"``, the samples per problem.
  """
  correct_PN = np.asarray(correct_PN, dtype=bool)
  if correct_PN.ndim != 2 or correct_PN.size == 0:
    raise ValueError(
        "correct_PN must be a non-empty [problems, samples] bool array, got"
        f" shape {correct_PN.shape}."
    )
  p, n = correct_PN.shape
  c = correct_PN.sum(axis=1)
  out = {"n": float(n)}
  for k in ks:
    if k <= n:
      out[f"pass@{k}"] = mean_pass_at_k(np.full(p, n), c, k)
  return out


def _default_equal(a: str, b: str) -> bool:
  from w2s_jax.evals import equivalence  # Deferred: keep this module light.

  return equivalence.strings_equal(a, b)


def group_answers(
    answers: Sequence[str | None],
    equal: Callable[[str, str], bool] | None = None,
) -> list[int]:
  """Group id of each sample's answer (-1 for None), greedy in sample order.

  Args:
    answers: One extracted answer per sample.
    equal: Equivalence test; default: normalised-string equality
      (:func:`equivalence.strings_equal`). Pass e.g. a Math-Verify-backed
      test for MATH.

  Returns:
    Group ids; group g's representative is its first member.
  """
  equal = equal or _default_equal
  representatives: list[str] = []
  labels = []
  for answer in answers:
    if answer is None:
      labels.append(-1)
      continue
    for g, rep in enumerate(representatives):
      if equal(answer, rep):
        labels.append(g)
        break
    else:
      representatives.append(answer)
      labels.append(len(representatives) - 1)
  return labels


def majority_index(labels: Sequence[int]) -> int | None:
  """Index of the first member of the winning group; None if all are None.

  The largest group wins; on a tie, the group whose first member comes
  earliest.
  """
  counts: dict[int, int] = {}
  first: dict[int, int] = {}
  for i, g in enumerate(labels):
    if g < 0:
      continue
    counts[g] = counts.get(g, 0) + 1
    first.setdefault(g, i)
  if not counts:
    return None
  best = max(counts, key=lambda g: (counts[g], -first[g]))
  return first[best]


def _subsets(n: int, k: int, num_subsets: int | None, seed: int):
  if num_subsets is None:
    return [np.arange(s * k, (s + 1) * k) for s in range(n // k)]
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be >= 1 or None, got {num_subsets}.")
  rng = np.random.default_rng(seed)
  # Sorted, so "earliest" keeps meaning sample order inside a subset.
  return [
      np.sort(rng.choice(n, size=k, replace=False)) for _ in range(num_subsets)
  ]


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    *,
    equal: Callable[[str, str], bool] | None = None,
    num_subsets: int | None = None,
    seed: int = 0,
) -> float:
  """maj@k of one problem, averaged over fixed k-subsets of its n samples.

  Args:
    answers: The n extracted answers (None: no answer).
    correct: The n per-sample grades against gold; a vote is correct iff its
      winning group's first member was graded correct.
    k: Voters per subset, 1 <= k <= n.
    equal: Answer equivalence for grouping (see :func:`group_answers`).
    num_subsets: None: the n // k disjoint consecutive blocks; else this many
      random k-subsets drawn with ``seed``.
    seed: Seed of the random subsets.

  Returns:
    Fraction of subsets whose majority answer is correct (a subset with no
    answers at all counts as wrong).
  """
  n = len(answers)
  if len(correct) != n:
    raise ValueError(
        f"answers and correct need one entry per sample, got {n} and"
        f" {len(correct)}."
    )
  _check_counts(n, 0, k)  # n >= 1 and 1 <= k <= n.
  labels = np.asarray(group_answers(answers, equal))
  correct = np.asarray(correct, dtype=bool)
  wins = []
  for subset in _subsets(n, k, num_subsets, seed):
    winner = majority_index(labels[subset].tolist())
    wins.append(winner is not None and bool(correct[subset[winner]]))
  return float(np.mean(wins))


def reasoning_gap_recovered(
    acc_w2sr: float, acc_student: float, acc_rl: float, eps: float = 1e-12
) -> float:
  """RGR = (Acc_W2SR - Acc_student) / (Acc_RL - Acc_student); NaN if undefined.

  Args:
    acc_w2sr: Accuracy of the student after SFT on weak-teacher traces.
    acc_student: Accuracy of the untrained student.
    acc_rl: Accuracy of the same student after RL (the gap's far end).
    eps: A denominator with ``|Acc_RL - Acc_student| < eps`` means RL closed
      no gap, so the ratio is undefined: NaN, never a division error or inf.

  Returns:
    1 when W2SR matches RL, 0 when it matches the untrained student.
  """
  gap = float(acc_rl) - float(acc_student)
  if not math.isfinite(gap) or abs(gap) < eps:
    return math.nan
  return (float(acc_w2sr) - float(acc_student)) / gap


def summarize(values: Sequence[float]) -> dict[str, Any]:
  """Mean and standard error of per-problem scores, with the count."""
  x = np.asarray(values, dtype=np.float64)
  if x.size == 0:
    raise ValueError("summarize needs at least one per-problem value.")
  sem = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
  return {"mean": float(x.mean()), "sem": sem, "count": int(x.size)}
