"""Tests for w2s_jax.evals.accuracy: pass@k, maj@k, RGR."""

import collections
import itertools
import math

import numpy as np
import pytest

from w2s_jax.evals import accuracy


def _pass_at_k_brute_force(n, c, k):
  """Fraction of all k-subsets of n samples (c correct) with a correct one."""
  samples = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_brute_force_enumeration(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      got = accuracy.pass_at_k(n, c, k)
      assert got == pytest.approx(_pass_at_k_brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_matches_binomial_form_for_large_n():
  n = 200
  for c in (0, 1, 13, 100, 199, 200):
    for k in (1, 5, 50, 200):
      want = 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)
      assert accuracy.pass_at_k(n, c, k) == pytest.approx(
          want, rel=1e-10, abs=1e-12
      )


def test_pass_at_k_properties():
  for n in (1, 4, 16, 64):
    for c in range(n + 1):
      assert accuracy.pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
      values = [accuracy.pass_at_k(n, c, k) for k in range(1, n + 1)]
      assert all(b >= a - 1e-15 for a, b in zip(values, values[1:]))
      for k in range(1, n + 1):
        if c > n - k:
          assert accuracy.pass_at_k(n, c, k) == 1.0


def test_mean_pass_at_k_and_table():
  # Two problems with different sample counts.
  got = accuracy.mean_pass_at_k([4, 8], [1, 0], k=2)
  # 1 - C(3, 2) / C(4, 2) = 1/2 for the first problem, 0 for the second.
  assert got == pytest.approx(0.25)
  assert got == pytest.approx((_pass_at_k_brute_force(4, 1, 2) + 0.0) / 2)
  correct_PN = np.array([[1, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], bool)
  table = accuracy.pass_at_k_table(correct_PN, ks=(1, 2, 4, 8))
  assert set(table) == {"n", "pass@1", "pass@2", "pass@4"}
  assert table["n"] == 4
  assert table["pass@1"] == pytest.approx((1 / 4 + 3 / 4 + 0) / 3)
  assert table["pass@4"] == pytest.approx(2 / 3)


def test_pass_at_k_bad_input():
  with pytest.raises(ValueError, match="k must be in"):
    accuracy.pass_at_k(4, 1, 5)
  with pytest.raises(ValueError, match="num_correct must be in"):
    accuracy.pass_at_k(4, 5, 1)
  with pytest.raises(ValueError, match="num_samples must be >= 1"):
    accuracy.pass_at_k(0, 0, 1)
  with pytest.raises(ValueError, match="same non-zero length"):
    accuracy.mean_pass_at_k([4, 4], [1], 1)
  with pytest.raises(ValueError, match=r"\[problems, samples\]"):
    accuracy.pass_at_k_table(np.zeros(3, bool))


def test_maj_tie_goes_to_the_earliest_group():
  # "1" and "2" both get two votes; "1" appears first.
  answers = ["1", "2", "2", "1"]
  assert accuracy.majority_index(accuracy.group_answers(answers)) == 0
  assert accuracy.maj_at_k(answers, [True, False, False, True], k=4) == 1.0
  answers = ["2", "1", "1", "2"]
  assert accuracy.majority_index(accuracy.group_answers(answers)) == 0
  assert accuracy.maj_at_k(answers, [False, True, True, False], k=4) == 0.0


def test_maj_groups_by_equivalence_and_drops_none():
  answers = [None, "3", r"\frac{1}{2}", None, "0.5", "1/2", "3", None]
  labels = accuracy.group_answers(answers)
  assert labels == [-1, 0, 1, -1, 1, 1, 0, -1]
  # None has three "votes" but is not an answer; 1/2 (x3) beats 3 (x2).
  correct = [False, False, True, False, True, True, False, False]
  assert accuracy.maj_at_k(answers, correct, k=8) == 1.0
  assert accuracy.maj_at_k([None, None], [False, False], k=2) == 0.0
  # A custom equivalence relation.
  same_parity = lambda a, b: int(a) % 2 == int(b) % 2
  assert accuracy.group_answers(["1", "2", "3"], same_parity) == [0, 1, 0]


def test_maj_at_k_averages_disjoint_blocks():
  answers = ["a", "a", "b", "c", "b", "b"]
  correct = [True, True, False, False, False, False]
  # Blocks [a a b], [c b b]: majorities a (right), b (wrong).
  assert accuracy.maj_at_k(answers, correct, k=3) == 0.5
  # Blocks of 2: [a a] right, [b c] tie -> b wrong, [b b] wrong.
  assert accuracy.maj_at_k(answers, correct, k=2) == pytest.approx(1 / 3)


def test_maj_at_k_random_subsets_against_enumeration():
  answers = ["7", "8", "7", "9", "8", "8"]
  correct = [a == "8" for a in answers]
  k = 3
  # Exact expectation over all k-subsets, by brute force.
  wins = []
  for subset in itertools.combinations(range(len(answers)), k):
    votes = collections.Counter(answers[i] for i in subset)
    top = max(votes.values())
    winner = next(answers[i] for i in subset if votes[answers[i]] == top)
    wins.append(winner == "8")
  exact = float(np.mean(wins))
  approx = accuracy.maj_at_k(answers, correct, k, num_subsets=4000, seed=0)
  assert approx == pytest.approx(exact, abs=0.03)
  again = accuracy.maj_at_k(answers, correct, k, num_subsets=4000, seed=0)
  assert again == approx  # Fixed subsets: deterministic.


def test_maj_at_k_bad_input():
  with pytest.raises(ValueError, match="one entry per sample"):
    accuracy.maj_at_k(["1"], [True, False], k=1)
  with pytest.raises(ValueError, match="k must be in"):
    accuracy.maj_at_k(["1"], [True], k=2)
  with pytest.raises(ValueError, match="num_subsets must be"):
    accuracy.maj_at_k(["1"], [True], k=1, num_subsets=0)


def test_reasoning_gap_recovered():
  assert accuracy.reasoning_gap_recovered(0.6, 0.3, 0.6) == 1.0
  assert accuracy.reasoning_gap_recovered(0.3, 0.3, 0.6) == 0.0
  assert accuracy.reasoning_gap_recovered(0.45, 0.3, 0.6) == pytest.approx(0.5)
  assert accuracy.reasoning_gap_recovered(0.2, 0.3, 0.6) == pytest.approx(
      -1 / 3
  )
  assert math.isnan(accuracy.reasoning_gap_recovered(0.5, 0.4, 0.4))
  assert math.isnan(accuracy.reasoning_gap_recovered(0.5, 0.4, 0.4 + 1e-15))


def test_summarize():
  s = accuracy.summarize([1.0, 0.0, 1.0, 1.0])
  assert s["mean"] == 0.75 and s["count"] == 4
  assert s["sem"] == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)
  with pytest.raises(ValueError, match="at least one"):
    accuracy.summarize([])
