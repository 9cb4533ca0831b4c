"""Tests of w2s_jax.losses.rewards_shaping (docs/methods.md, "GRPO" / "AMPO")."""

import jax
import numpy as np
import pytest

from w2s_jax import losses


def test_group_advantages_match_reference_and_are_zero_mean():
  rng = np.random.default_rng(0)
  r = rng.normal(size=(5, 8)).astype(np.float32)
  a = np.asarray(losses.group_advantages(r, eps=1e-6))
  r64 = r.astype(np.float64)
  ref = (r64 - r64.mean(-1, keepdims=True)) / (
      r64.std(-1, ddof=1, keepdims=True) + 1e-6
  )
  np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a.mean(-1), 0.0, atol=1e-6)
  dr = np.asarray(losses.group_advantages(r, normalize_std=False))
  np.testing.assert_allclose(dr, r64 - r64.mean(-1, keepdims=True), atol=1e-6)
  np.testing.assert_allclose(dr.mean(-1), 0.0, atol=1e-6)


@pytest.mark.parametrize("normalize_std", [True, False])
def test_constant_reward_group_has_zero_advantage_without_nan(normalize_std):
  # 0.1 and 0.7 are not exact in binary: a naive mean leaves ~1e-8 residues,
  # which 1/eps would blow up to O(0.01) advantages.
  r = np.array([[0.1] * 3 + [0.0] * 4, [0.7] * 7, [1.0, 0, 1, 0, 1, 0, 1]])
  r[0] = 0.1
  a = np.asarray(
      losses.group_advantages(r, normalize_std=normalize_std, eps=1e-6)
  )
  assert np.isfinite(a).all()
  assert np.all(a[:2] == 0.0)
  assert np.abs(a[2]).min() > 0.1


def test_group_size_one_with_std_is_refused():
  with pytest.raises(ValueError, match="group size G=1.*normalize_std=False"):
    losses.group_advantages(np.ones((4, 1)))
  a = losses.group_advantages(np.arange(4.0)[:, None], normalize_std=False)
  assert np.all(np.asarray(a) == 0.0)
  with pytest.raises(ValueError, match="eps must be >= 0"):
    losses.group_advantages(np.ones((2, 3)), eps=-1.0)


def test_overlong_penalty():
  lengths = np.array([0, 10000, 16384, 17408, 18432, 20480, 22528])
  got = np.asarray(
      losses.overlong_penalty(lengths, max_len=20480, buffer_len=4096)
  )
  ref = np.minimum(-(lengths - (20480 - 4096)) / 4096.0, 0.0)
  np.testing.assert_allclose(got, ref, rtol=1e-6)
  np.testing.assert_allclose(got[:3], 0.0)
  np.testing.assert_allclose(got[5], -1.0)  # −f at L_max
  np.testing.assert_allclose(got[3:5], [-0.25, -0.5])
  half = losses.overlong_penalty(
      20480, max_len=20480, buffer_len=4096, factor=0.5
  )
  np.testing.assert_allclose(float(half), -0.5)
  with pytest.raises(ValueError, match="buffer_len must lie in"):
    losses.overlong_penalty(lengths, max_len=100, buffer_len=200)
  with pytest.raises(ValueError, match="factor must be >= 0"):
    losses.overlong_penalty(lengths, factor=-1.0)


def test_dynamic_sampling_filter_drops_all_right_and_all_wrong_groups():
  acc = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0], [1, 1, 0, 1]])
  keep = np.asarray(losses.dynamic_sampling_filter(acc))
  np.testing.assert_array_equal(keep, [False, False, True, True])
  # Kept groups are exactly those with a nonzero advantage somewhere.
  adv = np.asarray(losses.group_advantages(acc.astype(np.float32)))
  np.testing.assert_array_equal(keep, np.abs(adv).max(-1) > 0)


def test_ampo_guidance_injects_only_on_total_failure():
  correct = np.zeros((4, 8), bool)
  correct[1, 3] = True  # a group with one correct rollout: no guidance
  scores = np.array(
      [
          [0.2, 0.9, 0.5, 0.1],
          [0.9, 0.9, 0.9, 0.9],
          [0.3, 0.1, 0.8, 0.2],
          [0.7, 0.6, 0.5, 0.4],
      ],
      np.float32,
  )
  valid = np.ones((4, 4), bool)
  valid[2, 1:] = False  # only one stored teacher solution for prompt 2
  inject, teacher = losses.ampo_guidance(
      correct, scores, jax.random.key(0), teacher_valid_NT=valid
  )
  inject, teacher = np.asarray(inject), np.asarray(teacher)
  assert inject.shape == correct.shape  # the group size stays G
  np.testing.assert_array_equal(inject.sum(-1), [2, 0, 1, 2])
  assert sorted(teacher[0][inject[0]]) == [1, 2]  # the two best teachers
  assert teacher[2][inject[2]].tolist() == [0]  # the only valid one
  assert sorted(teacher[3][inject[3]]) == [0, 1]
  assert np.all(teacher[~inject] == -1)
  # Mixed group: injected rollouts get reward 1; A is zero-mean, no std.
  r = np.where(inject, 1.0, correct.astype(np.float32))
  adv = np.asarray(losses.group_advantages(r, normalize_std=False))
  np.testing.assert_allclose(adv.mean(-1), 0.0, atol=1e-6)
  assert np.all(adv[inject] > 0)
  # Another key picks other slots but the same counts and teachers.
  inject2, _ = losses.ampo_guidance(
      correct, scores, jax.random.key(1), teacher_valid_NT=valid
  )
  np.testing.assert_array_equal(np.asarray(inject2).sum(-1), [2, 0, 1, 2])


def test_ampo_guidance_bad_inputs():
  with pytest.raises(ValueError, match=r"teacher_scores_NT has shape \(3, 2\)"):
    losses.ampo_guidance(np.zeros((4, 8)), np.zeros((3, 2)), jax.random.key(0))
  with pytest.raises(ValueError, match="max_teachers must be an int >= 1"):
    losses.ampo_guidance(
        np.zeros((4, 8)), np.zeros((4, 2)), jax.random.key(0), max_teachers=0
    )
