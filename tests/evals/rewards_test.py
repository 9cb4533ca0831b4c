"""Tests for w2s_jax.evals.rewards (docs/methods.md, "Surrogate rewards" / "Grading")."""

import operator
import time

import numpy as np
import pytest

from w2s_jax.evals import equivalence, rewards, worker_pool


@pytest.fixture(scope="module")
def verifier():
  with equivalence.Verifier(num_workers=2, timeout_s=1.0) as v:
    yield v


def _r_len_reference(x, p):
  """Independent float64 R_l(x) from the docs/methods.md, "Surrogate rewards" formula."""
  if x <= p:
    return 1.0 - (1.0 - x / p) ** 2
  return 1.0 - 2.0 * ((x - p) / (1.0 - p)) ** 2


# ---------------------------------------------------------------------------
# Correctness.
# ---------------------------------------------------------------------------


def test_gsm8k_correctness_rules_and_failures_are_counted():
  completions = [
      r"so the answer is \boxed{18}",  # boxed, correct
      "work\n#### 1,8\n",  # hash: "18" after comma removal
      "she makes 9 * 2 = 18 dollars",  # last number, correct
      "she makes 17 dollars",  # last number, wrong
      "I cannot tell.",  # no answer
      None,  # not text: an error, not an exception
      r"\boxed{18",  # unbalanced final box: no answer
      r"\boxed{\frac{36}{2}}",  # numeric compare, exact rationals
  ]
  stats = rewards.RewardStats()
  r = rewards.correctness_rewards(
      completions, ["18"] * len(completions), task="gsm8k", stats=stats
  )
  np.testing.assert_array_equal(r, [1, 1, 1, 0, 0, 0, 0, 1])
  assert r.dtype == np.float32
  assert stats.total == 8 and stats.correct == 4
  assert stats.statuses == {
      "correct": 4,
      "wrong": 1,
      "no_answer": 2,
      "error": 1,
  }
  assert stats.rules == {"boxed": 3, "hash": 1, "last_number": 2, "none": 2}
  m = stats.metrics()
  assert m["reward/accuracy"] == 0.5
  assert m["reward/status/no_answer"] == 0.25
  assert m["reward/failure_frac"] == 0.125


def test_gsm8k_numeric_vs_strict():
  assert rewards.gsm8k_equal("1,000", "1000")
  assert rewards.gsm8k_equal("$1000.00", "1000")
  assert rewards.gsm8k_equal("1000.0000001", "1000")  # |a - b| < 1e-6.
  assert not rewards.gsm8k_equal("1000.00001", "1000")
  assert not rewards.gsm8k_equal("1,000", "1000", strict=True)
  assert rewards.gsm8k_equal(" 1000 ", "1000", strict=True)
  assert rewards.gsm8k_equal("The answer is 18.", "18")
  assert rewards.gsm8k_equal(r"18 \text{ dollars}", "18")
  assert rewards.gsm8k_equal("x = 0.75", r"\frac{3}{4}")
  assert not rewards.gsm8k_equal("The answer is 18.", "18", strict=True)
  assert not rewards.gsm8k_equal("no number", "18")
  assert not rewards.gsm8k_equal(None, "5")
  assert not rewards.gsm8k_equal("9" * 500, "5")  # Absurd length: wrong.


def test_dapo_style_plus_minus_one():
  r = rewards.correctness_rewards(
      ["#### 3", "#### 4"],
      ["3", "3"],
      task="gsm8k",
      correct_reward=1.0,
      wrong_reward=-1.0,
  )
  np.testing.assert_array_equal(r, [1.0, -1.0])


def test_math_correctness_with_verifier(verifier):
  completions = [
      r"\boxed{\frac12}",  # fast path
      r"\boxed{\sqrt{8}}",  # Math-Verify
      r"\boxed{3}",  # wrong
      "no box, answer 1/2",  # no answer (MATH uses the box only)
      r"\boxed{9^{9^{9^{9}}}}",  # adversarial: killed, graded wrong
  ]
  golds = [r"\frac{1}{2}", r"2\sqrt{2}", "4", r"\frac{1}{2}", "1"]
  stats = rewards.RewardStats()
  grades = rewards.grade_completions(
      completions, golds, task="math", verifier=verifier, stats=stats
  )
  assert [g.correct for g in grades] == [True, True, False, False, False]
  assert [g.status for g in grades] == [
      "correct",
      "correct",
      "wrong",
      "no_answer",
      "timeout",
  ]
  assert grades[1].answer == r"\sqrt{8}"
  assert stats.failures == 1


def test_math_string_only_grading():
  grades = rewards.grade_completions(
      [r"\boxed{0.5}", r"\boxed{\sqrt{8}}"],
      [r"\frac{1}{2}", r"2\sqrt{2}"],
      task="math",
      use_math_verify=False,
  )
  assert [g.correct for g in grades] == [True, False]


def test_bad_arguments_raise_clearly():
  with pytest.raises(ValueError, match="task must be one of"):
    rewards.grade_completions(["x"], ["1"], task="aime")
  with pytest.raises(ValueError, match="one gold per completion"):
    rewards.grade_completions(["x", "y"], ["1"], task="gsm8k")


def test_apply_reward_fn_in_process_counts_failures():
  def flaky(completion, gold):
    if completion == "raise":
      raise RuntimeError("boom")
    if completion == "nan":
      return float("nan")
    if completion == "str":
      return "not a number"
    return 1.0 if completion == gold else 0.0

  stats = rewards.RewardStats()
  r = rewards.apply_reward_fn(
      flaky,
      ["a", "b", "raise", "nan", "str"],
      ["a"] * 5,
      wrong_reward=-0.5,
      stats=stats,
  )
  np.testing.assert_array_equal(r, [1.0, 0.0, -0.5, -0.5, -0.5])
  assert stats.statuses == {"correct": 1, "wrong": 1, "error": 3}


def test_apply_reward_fn_in_pool_times_out():
  with worker_pool.WorkerPool(2, timeout_s=0.5) as pool:
    stats = rewards.RewardStats()
    # pow(10, 10**10) never finishes (C-level); operator.truediv(1, 0) raises.
    r = rewards.apply_reward_fn(
        pow, [2, 10], [3, 10**10], pool=pool, stats=stats
    )
    np.testing.assert_array_equal(r, [8.0, 0.0])
    r2 = rewards.apply_reward_fn(
        operator.truediv, [1, 1], [2, 0], pool=pool, stats=stats
    )
    np.testing.assert_array_equal(r2, [0.5, 0.0])
  assert stats.statuses == {"correct": 2, "timeout": 1, "error": 1}


# ---------------------------------------------------------------------------
# Surrogate format-length reward.
# ---------------------------------------------------------------------------


def test_length_reward_checks():
  L, p = 3072, 0.5
  assert rewards.length_reward(0, L, p) == 0.0
  assert rewards.length_reward(p * L, L, p) == 1.0
  assert rewards.length_reward(L, L, p) == -1.0
  assert rewards.length_reward(10 * L, L, p) == -1.0  # Clipped at x = 1.
  # Continuity and zero slope at the peak.
  h = 1e-6
  left = rewards.length_reward((p - h) * L, L, p)
  right = rewards.length_reward((p + h) * L, L, p)
  assert abs(left - 1.0) < 1e-9 and abs(right - 1.0) < 1e-9
  slope = (right - left) / (2 * h)
  assert abs(slope) < 1e-4
  # Both one-sided slopes vanish (quadratics with their vertex at p).
  assert abs((1.0 - left) / h) < 1e-4 and abs((1.0 - right) / h) < 1e-4


@pytest.mark.parametrize("p", [0.25, 0.5, 0.8])
def test_length_reward_matches_reference_on_a_grid(p):
  L = 1000
  tokens = np.arange(0, L + 1)
  want = np.array([_r_len_reference(t / L, p) for t in tokens])
  np.testing.assert_allclose(rewards.length_reward(tokens, L, p), want, atol=0)
  # Rises on [0, p], falls on [p, 1].
  got = rewards.length_reward(tokens, L, p)
  k = int(p * L)
  assert np.all(np.diff(got[: k + 1]) > 0) and np.all(np.diff(got[k:]) < 0)


def test_length_reward_bad_input():
  with pytest.raises(ValueError, match="peak must be in"):
    rewards.length_reward(10, 100, 1.0)
  with pytest.raises(ValueError, match="num_tokens must be >= 0"):
    rewards.length_reward([-1], 100)
  with pytest.raises(ValueError, match="max_tokens must be > 0"):
    rewards.length_reward(1, 0)


def test_combine_surrogate_properties():
  r_len = rewards.length_reward(np.arange(0, 3073, 7), 3072)
  for variant in ("paper", "code"):
    for soft in (0.0, 1.0):
      wrong = rewards.combine_surrogate(False, soft, r_len, variant)
      assert np.all(wrong <= 0.0)
      np.testing.assert_array_equal(wrong, np.minimum(0.0, r_len))
  paper = rewards.combine_surrogate(True, 0.0, r_len, "paper")
  code = rewards.combine_surrogate(True, 0.0, r_len, "code")
  np.testing.assert_allclose(paper - code, 0.5, atol=1e-12)
  np.testing.assert_allclose(paper, 1.0 + r_len, atol=0)
  # With a <think> block the code variant also pays 1 for format.
  code_soft = rewards.combine_surrogate(True, 1.0, r_len, "code")
  np.testing.assert_allclose(code_soft, paper, atol=1e-12)
  fmt = rewards.combine_surrogate(
      [True, False], [1.0, 1.0], [0.3, 0.3], "format_only"
  )
  np.testing.assert_array_equal(fmt, [1.0, 0.5])
  with pytest.raises(ValueError, match="variant must be"):
    rewards.combine_surrogate(True, 0.0, 0.0, "dapo")


def test_format_answer_and_soft_format():
  assert rewards.format_answer("<answer> 42 </answer>") == "42"
  assert rewards.format_answer(r"<answer>so \boxed{7}</answer>") == "7"
  assert rewards.format_answer("<answer>  </answer>") is None
  assert rewards.format_answer(r"<think>\boxed{1}</think> done") is None
  assert rewards.format_answer(r"<think>x</think> \boxed{2}") == "2"
  assert rewards.format_answer(r"plain \boxed{3}") == "3"
  assert rewards.soft_format("<think>a</think>b") == 1.0
  assert rewards.soft_format("<think>a") == 0.0


def test_surrogate_rewards_end_to_end(verifier):
  L = 3072
  completions = [
      r"<think>reasoning</think> \boxed{\frac{1}{2}}",  # soft + answer
      r"reasoning \boxed{\frac{1}{2}}",  # answer only (Qwen-Math template)
      "reasoning without a final answer",  # format wrong
      r"reasoning \boxed{)(}",  # does not parse: format wrong
      None,  # not text: format wrong, counted
  ]
  tokens = np.array([L // 2, L // 2, L // 4 * 3, L // 2, L])
  stats = rewards.RewardStats()
  code = rewards.surrogate_rewards(
      completions, tokens, variant="code", verifier=verifier, stats=stats
  )
  paper = rewards.surrogate_rewards(
      completions, tokens, variant="paper", verifier=verifier
  )
  r_075 = _r_len_reference(0.75, 0.5)  # 0.5
  np.testing.assert_allclose(code, [2.0, 1.5, 0.0, 0.0, -1.0])
  np.testing.assert_allclose(paper, [2.0, 2.0, min(0.0, r_075), 0.0, -1.0])
  assert stats.correct == 2
  assert stats.statuses == {
      "format_ok": 2,
      "no_answer": 1,
      "unparsable": 1,
      "error": 1,
  }
  # Without the parse check, ")(" counts as an answer.
  no_parse = rewards.surrogate_rewards(
      completions, tokens, variant="paper", check_parse=False
  )
  assert no_parse[3] == 2.0
  with pytest.raises(ValueError, match="one length per completion"):
    rewards.surrogate_rewards(completions, tokens[:2])


def test_answer_format_parse_timeout_and_length_are_format_wrong(verifier):
  # A 3000-term sum takes ~2.8 s to parse on a quiet 2-core VM, well past the
  # 0.5 s deadline (300 terms took ~0.5 s: a race with the deadline).
  slow = "+".join([r"\frac{1}{x+%d}" % i for i in range(3000)])
  with equivalence.Verifier(1, timeout_s=0.5, max_chars=10**5) as v:
    stats = rewards.RewardStats()
    ok = rewards.answer_formats(
        [r"\boxed{" + slow + "}"], verifier=v, stats=stats
    )
  assert not ok[0]
  assert stats.statuses == {"timeout": 1}
  # Past the verifier's max_chars: not parsed at all.
  stats = rewards.RewardStats()
  ok = rewards.answer_formats(
      [r"\boxed{" + slow + "}", r"\boxed{1}"], verifier=verifier, stats=stats
  )
  np.testing.assert_array_equal(ok, [False, True])
  assert stats.statuses == {"too_long": 1, "format_ok": 1}


def test_format_parsing_is_linear_on_adversarial_output():
  # Regex versions of these checks backtrack quadratically (minutes here).
  start = time.monotonic()
  assert rewards.format_answer("<answer>" * 200_000 + "x") is None
  assert rewards.soft_format("<think>" * 200_000) == 0.0
  assert rewards.format_answer("<answer>1" * 50_000 + "</answer>") is not None
  assert time.monotonic() - start < 2.0
