"""Tests for w2s_jax.evals.bootstrap against hand-computed cases."""

import pytest

from w2s_jax.evals import bootstrap as B


def test_paired_bootstrap_matches_the_exact_resampling_distribution():
  # d = b - a = [0, 0, 0, 1]: a resample's mean is K/4, K ~ Binomial(4, 1/4):
  # P(K<=0) = 0.316, P(K<=1) = 0.738, P(K<=2) = 0.949, P(K<=3) = 0.996.
  # So the 2.5 % quantile is 0 and the 97.5 % quantile is 3/4, by hand.
  a = [1.0, 0.5, 0.0, 0.0]
  b = [1.0, 0.5, 0.0, 1.0]
  ci = B.paired_bootstrap(a, b, num_resamples=20_000, seed=3)
  assert ci == {"diff": 0.25, "lo": 0.0, "hi": 0.75, "n": 4.0}
  # The 50 % interval: quantile 0.25 is 0 (0.316 > 0.25), quantile 0.75 is
  # 1/2 (P(K<=1) = 0.738 < 0.75 <= P(K<=2)).
  mid = B.paired_bootstrap(a, b, num_resamples=20_000, level=0.5, seed=3)
  assert (mid["lo"], mid["hi"]) == (0.0, 0.5)


def test_paired_bootstrap_is_a_function_of_data_and_seed():
  a = [0.0, 1.0, 0.5, 0.25, 1.0, 0.0]
  b = [1.0, 1.0, 0.75, 0.0, 1.0, 1.0]
  one = B.paired_bootstrap(a, b, num_resamples=500, seed=7)
  assert one == B.paired_bootstrap(a, b, num_resamples=500, seed=7)
  assert one["diff"] == pytest.approx((1 + 0 + 0.25 - 0.25 + 0 + 1) / 6)
  # Constant differences: the interval collapses onto them.
  c = B.paired_bootstrap([0.0, 0.5], [0.25, 0.75], num_resamples=100)
  assert c["lo"] == c["hi"] == c["diff"] == 0.25
  # Swapping the arms negates everything.
  swap = B.paired_bootstrap(b, a, num_resamples=500, seed=7)
  assert swap["diff"] == -one["diff"]
  assert swap["lo"] == pytest.approx(-one["hi"])


def test_paired_bootstrap_refuses_unpaired_input():
  with pytest.raises(ValueError, match="one length"):
    B.paired_bootstrap([0.0, 1.0], [1.0])
  with pytest.raises(ValueError, match="level=1.5"):
    B.paired_bootstrap([0.0], [1.0], level=1.5)


@pytest.mark.parametrize(
    "diffs,direction,agree,disagree,ties,p",
    [
        ([0.1] * 5, 1, 5, 0, 0, 1 / 32),  # 5 of 5: 2**-5
        ([0.1, 0.2, 0.3], 1, 3, 0, 0, 1 / 8),
        ([0.1, 0.1, 0.1, 0.1, -0.1], 1, 4, 1, 0, 6 / 32),  # (1 + 5) / 32
        ([0.1, -0.2, 0.0], -1, 1, 1, 1, 3 / 4),
        ([0.0], 1, 0, 0, 1, 1.0),
    ],
)
def test_sign_test_by_hand(diffs, direction, agree, disagree, ties, p):
  s = B.sign_test(diffs, direction)
  assert (s["agree"], s["disagree"], s["ties"]) == (agree, disagree, ties)
  assert s["p"] == pytest.approx(p)


def _ci(lo, hi):
  return {"diff": (lo + hi) / 2, "lo": lo, "hi": hi, "n": 800.0}


@pytest.mark.parametrize(
    "cis,direction,expected",
    [
        ([_ci(0.01, 0.05)], 1, B.REPRODUCES),
        ([_ci(0.01, 0.05), _ci(-0.01, 0.04)], 1, B.INCONCLUSIVE),
        ([_ci(-0.05, -0.01)], -1, B.REPRODUCES),
        ([_ci(-0.05, -0.01)], 1, B.DOES_NOT),  # reversed
        ([_ci(-0.01, 0.015)], 1, B.DOES_NOT),  # effect of 0.02 ruled out
        ([_ci(-0.01, 0.03)], 1, B.INCONCLUSIVE),
        ([], 1, B.INCONCLUSIVE),
    ],
)
def test_verdict(cis, direction, expected):
  assert B.verdict(cis, direction, min_effect=0.02) == expected


def test_compare_over_seeds():
  per_seed = [([0.0] * 8 + [1.0], [1.0] * 9)] * 3
  out = B.compare(per_seed, direction=1, min_effect=0.02, num_resamples=200)
  assert out["verdict"] == B.REPRODUCES
  assert out["mean_diff"] == pytest.approx(8 / 9)
  assert out["signs"]["agree"] == 3 and out["signs"]["p"] == 1 / 8
  assert len(out["seeds"]) == 3
