"""Paired comparisons of two models on the same problems: CI, signs, verdict.

``paired_bootstrap`` resamples problems (with replacement, one seeded numpy
generator) and gives the mean per-problem difference ``b - a`` with a
percentile confidence interval; ``sign_test`` counts the seeds whose
difference has each sign and the one-sided binomial p-value of the expected
sign; ``verdict`` turns per-seed intervals into ``reproduces`` /
``does not reproduce`` / ``inconclusive`` for a claim with an expected
direction written down before the run.

Shape legend: P problems, R bootstrap resamples, S seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

REPRODUCES = "reproduces"
DOES_NOT = "does not reproduce"
INCONCLUSIVE = "inconclusive"


def paired_bootstrap(
    a_P: Sequence[float],
    b_P: Sequence[float],
    *,
    num_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
  """Mean of ``b - a`` over problems and its percentile bootstrap CI.

  Args:
    a_P, b_P: per-problem scores of two models on the same problems, in the
      same order (e.g. the fraction of a problem's samples that are right).
    num_resamples: bootstrap resamples R.
    level: coverage of the interval.
    seed: the resampling generator's seed (the interval is a function of
      the data and this seed only).

  Returns:
    ``{diff, lo, hi, n}``: the observed mean difference, the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's
    ``linear`` rule) of the resampled means, and the number of problems.
  """
  a = np.asarray(a_P, np.float64)
  b = np.asarray(b_P, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(
        "paired scores must be two non-empty 1-D arrays of one length, got"
        f" shapes {a.shape} and {b.shape}."
    )
  if not 0.0 < level < 1.0 or num_resamples < 1:
    raise ValueError(
        f"level={level} must be in (0, 1) and num_resamples={num_resamples}"
        " >= 1."
    )
  d_P = b - a
  rng = np.random.default_rng(seed)
  idx_RP = rng.integers(0, d_P.size, size=(num_resamples, d_P.size))
  means_R = d_P[idx_RP].mean(axis=1)
  lo, hi = np.quantile(means_R, [(1 - level) / 2, (1 + level) / 2])
  return {
      "diff": float(d_P.mean()),
      "lo": float(lo),
      "hi": float(hi),
      "n": float(d_P.size),
  }


def sign_test(diffs_S: Sequence[float], direction: int) -> dict[str, float]:
  """Seeds whose difference has the expected sign, and a sign-test p-value.

  Args:
    diffs_S: one difference ``b - a`` per seed.
    direction: +1 if the claim expects ``b > a``, -1 if ``b < a``.

  Returns:
    ``{agree, disagree, ties, p}``: ``p`` is the one-sided binomial
    probability of at least ``agree`` agreeing signs among the non-tied
    seeds under a fair coin (1.0 with no untied seed).
  """
  if direction not in (1, -1):
    raise ValueError(f"direction={direction}: must be +1 or -1.")
  x = np.asarray(diffs_S, np.float64) * direction
  agree, disagree = int((x > 0).sum()), int((x < 0).sum())
  n = agree + disagree
  p = sum(math.comb(n, k) for k in range(agree, n + 1)) / 2.0**n if n else 1.0
  return {
      "agree": float(agree),
      "disagree": float(disagree),
      "ties": float(x.size - n),
      "p": float(p),
  }


def verdict(
    cis: Sequence[dict[str, float]], direction: int, min_effect: float
) -> str:
  """A claim's verdict from its per-seed intervals.

  ``reproduces``: every seed's interval lies on the expected side of 0.
  ``does not reproduce``: every seed's interval rules out an effect of
  ``min_effect`` in the expected direction (it is smaller or reversed).
  Otherwise ``inconclusive``.
  """
  if not cis:
    return INCONCLUSIVE
  if direction not in (1, -1):
    raise ValueError(f"direction={direction}: must be +1 or -1.")
  # Interval of the difference in the expected direction.
  los = [min(direction * c["lo"], direction * c["hi"]) for c in cis]
  his = [max(direction * c["lo"], direction * c["hi"]) for c in cis]
  if all(lo > 0 for lo in los):
    return REPRODUCES
  if all(hi < min_effect for hi in his):
    return DOES_NOT
  return INCONCLUSIVE


def compare(
    per_seed: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    direction: int,
    min_effect: float,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
  """One claim over seeds: per-seed paired CIs, sign count and verdict.

  Args:
    per_seed: ``(a_P, b_P)`` per seed.
    direction: +1 if ``b > a`` is expected, -1 if ``b < a``.
    min_effect: the smallest difference that counts as the claimed effect.
    num_resamples, seed: of the bootstrap.

  Returns:
    ``{seeds: [ci...], mean_diff, signs: sign_test(...), verdict}``.
  """
  cis = [
      paired_bootstrap(a, b, num_resamples=num_resamples, seed=seed)
      for a, b in per_seed
  ]
  diffs = [c["diff"] for c in cis]
  return {
      "seeds": cis,
      "mean_diff": float(np.mean(diffs)) if diffs else math.nan,
      "signs": sign_test(diffs, direction),
      "verdict": verdict(cis, direction, min_effect),
  }
