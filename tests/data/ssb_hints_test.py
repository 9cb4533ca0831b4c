"""Tests for w2s_jax.data.ssb_hints: SSB selection rules, hinted prompts and teacher-row alignment."""

import numpy as np
import pytest

from w2s_jax.data import ssb_hints

R = ssb_hints.Rollout


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_keeps_only_problems_with_a_right_and_a_wrong_rollout():
  assert ssb_hints.select_hints([R("a", "1", True)] * 4, _rng()) is None
  assert ssb_hints.select_hints([R("a", "2", False)] * 4, _rng()) is None
  pair = ssb_hints.select_hints(
      [R("w", "2", False), R("c1", "1", True), R("c2", "1", True)], _rng()
  )
  assert (pair.correct.text, pair.wrong.text, pair.num_correct) == (
      "c1",
      "w",
      2,
  )


def test_majority_wrong_answer_wins():
  rollouts = [
      R("w3a", "3", False),
      R("c", "1", True),
      R("w5a", "5", False),
      R("w5b", "5", False),
  ]
  for seed in range(5):  # no tie: the draw never matters
    pair = ssb_hints.select_hints(rollouts, _rng(seed))
    assert (pair.wrong.text, pair.wrong_answer) == ("w5a", "5")


def test_all_distinct_wrong_answers_pick_at_random_but_seeded():
  rollouts = [R("c", "1", True)] + [R(f"w{a}", a, False) for a in "2345"]
  picks = {
      seed: ssb_hints.select_hints(rollouts, _rng(seed)).wrong_answer
      for seed in range(40)
  }
  assert set(picks.values()) == set("2345")  # every answer can be drawn
  again = {
      s: ssb_hints.select_hints(rollouts, _rng(s)).wrong_answer for s in picks
  }
  assert again == picks  # and the draw depends on the seed only


def test_wrong_rollouts_without_answer_count_only_when_alone():
  rollouts = [
      R("c", "1", True),
      R("none1", None, False),
      R("none2", None, False),
      R("w", "7", False),
  ]
  assert ssb_hints.select_hints(rollouts, _rng()).wrong_answer == "7"
  only_none = [R("c", "1", True), R("n", None, False)]
  pair = ssb_hints.select_hints(only_none, _rng())
  assert pair.wrong.text == "n" and pair.wrong_answer is None


def test_hinted_prompt_holds_question_and_both_rollouts():
  pair = ssb_hints.HintPair(
      R(" right ", "1", True), R("wrong", "2", False), "2", 1
  )
  text = ssb_hints.hinted_prompt("What is 1?", pair, "text")
  assert text.startswith("What is 1?")
  assert "Correct attempt:\nright\n" in text  # stripped
  assert "Incorrect attempt:\nwrong\n" in text
  assert "do not mention" in text and "\\boxed{}" in text
  raw = ssb_hints.hinted_prompt("Q:1+0?", pair, "raw")
  assert raw == "use right not wrong Q:1+0?"
  with pytest.raises(ValueError, match=r"ssb.hint_style must be one of"):
    ssb_hints.hinted_prompt("q", pair, "fancy")


def test_student_prompt_prepends_system_with_a_space():
  assert ssb_hints.student_prompt("Q", "Sys") == "Sys Q"
  assert ssb_hints.student_prompt("Q") == "Q"


def test_teacher_row_i_aligns_with_reply_token_i():
  p_h, p_s, r, k = 7, 3, 4, 2
  # Teacher row t carries id t and log-prob -t/100 (a tag per row).
  t_ids = np.repeat(np.arange(p_h + r)[:, None], k, 1).astype(np.int32)
  t_ids[:, 1] += 100
  t_lp = -np.repeat(np.arange(p_h + r)[:, None], k, 1) / 100.0
  ids, lps = ssb_hints.align_teacher_rows(t_ids, t_lp, p_h, p_s, r)
  assert ids.shape == lps.shape == (p_s + r, k)
  for i in range(r):  # student row predicting reply token i
    assert ids[p_s - 1 + i, 0] == p_h - 1 + i
    np.testing.assert_allclose(lps[p_s - 1 + i], t_lp[p_h - 1 + i])
  # Rows off the reply are padding the loss never reads.
  assert np.all(np.isneginf(lps[: p_s - 1])) and np.all(np.isneginf(lps[-1]))
  with pytest.raises(ValueError, match=r"teacher rows 10 != hinted prompt 7"):
    ssb_hints.align_teacher_rows(t_ids[:-1], t_lp[:-1], p_h, p_s, r)
  with pytest.raises(ValueError, match=r"must be >= 1"):
    ssb_hints.align_teacher_rows(t_ids, t_lp, p_h + r, p_s, 0)
