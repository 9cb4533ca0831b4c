"""KDRL: the KD term, its reward-guided masking, the β_t schedule, the spec."""

import os

import numpy as np
import pytest

from w2s_jax import config_lib, methods, testing
from w2s_jax.methods import grpo, kdrl

G, N, P, T = 4, 2, 3, 5  # group size, prompts, prompt width, new tokens
B = G * N
ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SPEC = methods.get("kdrl")
PG = dict(
    agg="token-mean",
    epsilon_low=0.2,
    epsilon_high=0.28,
    dual_clip=3.0,
    beta_ref=0.0,
    max_len=T,
)


def _kd_batch(model, seed=0):
  batch = testing.rl_batch(G, N, P, T, seed)
  batch["rewards"][0] = [1, 0, 0, 1]
  batch["rewards"][1] = [0, 1, 1, 1]
  lp = testing.np_token_logprobs(model, batch)
  rng = np.random.default_rng(seed + 5)
  adv = testing.np_group_advantages(batch["rewards"]).reshape(B)
  batch["advantages"] = adv.astype(np.float32)
  batch["old_logprobs"] = (lp + rng.normal(0, 0.2, lp.shape)).astype(np.float32)
  batch["teacher_logprobs"] = (lp + rng.normal(0, 1.0, lp.shape)).astype(
      np.float32
  )
  return batch


def _grads(spec, model, batch, hp):
  return testing.method_loss_and_grads(spec, model, batch, hp)


def test_kdrl_with_beta_zero_equals_grpo_exactly():
  model = testing.rl_model()
  batch = _kd_batch(model)
  batch["kd_beta"][:] = 0.0
  grpo_spec = methods.get("grpo")
  l_g, _, g_g = _grads(grpo_spec, model, batch, grpo.GRPOHparams(**PG))
  hp = kdrl.KDRLHparams(**PG, kd_masking="none", group_size=G)
  l_k, m_k, g_k = _grads(SPEC, model, batch, hp)
  assert float(m_k["kdrl/kd"]) > 0  # the KD term is there, weighted by 0
  assert float(l_g) == float(l_k)
  np.testing.assert_array_equal(testing.flat(g_g), testing.flat(g_k))
  batch["kd_beta"][:] = 0.5
  l_k2, _, _ = _grads(SPEC, model, batch, hp)
  assert float(l_k2) > float(l_g)


@pytest.mark.parametrize("masking", ["none", "response", "group"])
def test_kd_masking_zeroes_the_kd_gradient_where_methods_says(masking):
  model = testing.rl_model()
  batch = _kd_batch(model)
  batch["advantages"][:] = 0.0  # only the KD term has a gradient
  batch["kd_beta"][:] = 1.0
  # Group 0 has correct rows; group 1 is all wrong.
  batch["correct"] = np.array([1, 0, 0, 1, 0, 0, 0, 0], np.float32)
  hp = kdrl.KDRLHparams(
      **PG, kd_masking=masking, kd_estimator="k2", group_size=G
  )
  _, m, g = _grads(SPEC, model, batch, hp)
  keep = {
      "none": np.ones(B, bool),
      "response": batch["correct"] == 0,
      "group": np.repeat([False, True], G),
  }[masking]
  np.testing.assert_allclose(float(m["kdrl/keep_frac"]), keep.mean())
  for row in range(B):
    moved = {**batch, "teacher_logprobs": batch["teacher_logprobs"].copy()}
    moved["teacher_logprobs"][row] += 0.7
    _, _, g2 = _grads(SPEC, model, moved, hp)
    same = np.array_equal(testing.flat(g), testing.flat(g2))
    assert same == (not keep[row]), (masking, row)


def test_beta_schedule_anneals_to_its_floor_and_rides_in_the_batch():
  hp = kdrl.KDRLHparams()
  got = [kdrl.kd_beta(hp, t) for t in (0, 40, 80, 200)]
  np.testing.assert_allclose(got, [5e-3, 3e-3, 1e-3, 1e-3], rtol=1e-6)
  const = kdrl.schedule("const", hp)
  assert kdrl.kd_beta(const, 10_000) == pytest.approx(5e-3)
  arrays = SPEC.step_arrays(hp, 40, 6)
  assert (
      arrays["kd_beta"].shape == (6,) and arrays["kd_beta"].dtype == np.float32
  )
  np.testing.assert_allclose(arrays["kd_beta"], 3e-3, rtol=1e-6)
  with pytest.raises(ValueError, match="beta='cosine'"):
    kdrl.schedule("cosine", hp)


def test_config_reaches_the_hparams_in_one_import():
  c = config_lib.load(
      os.path.join(ROOT, "configs/kdrl.py:kd=k3,beta=const,mask=group")
  )
  hp = SPEC.hp(c.loss)
  assert isinstance(hp, kdrl.KDRLHparams)
  assert (hp.kd_estimator, hp.kd_masking, hp.beta_ref) == ("k3", "group", 0.0)
  assert hp.kd_beta_decay == 0.0 and hp.kd_beta_min == hp.kd_beta_init
  assert SPEC.score_models(hp) == ("teacher",)
  assert SPEC.score_models(hp.replace(beta_ref=0.1)) == ("ref", "teacher")
  assert SPEC.policy_gradient and SPEC.rollouts == "student"


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("kd_estimator", "k4", r"loss.kd_estimator='k4' .* one of"),
        ("kd_masking", "rows", r"loss.kd_masking='rows' .* one of"),
        ("kd_beta_init", -1.0, r"loss.kd_beta_init=-1.0 .* >= 0"),
        ("kd_beta_min", 0.1, r"loss.kd_beta_min=0.1 .* in \[0, loss.kd_beta"),
        ("kd_beta_decay", -1e-5, r"loss.kd_beta_decay=-1e-05 .* >= 0"),
        ("kd", True, r"loss.kd is not a hyperparameter of method 'kdrl'"),
    ],
)
def test_bad_kd_keys_name_the_key_and_the_bound(key, value, msg):
  with pytest.raises(methods.HparamError, match=msg):
    SPEC.hp({key: value})


def test_the_trainer_fills_group_size_and_max_len_from_the_rl_section():
  from w2s_jax.rl import learner  # noqa: PLC0415

  c = config_lib.load(os.path.join(ROOT, "configs/kdrl.py:runlocal"))
  hp = learner.loss_config(c, SPEC)
  assert (hp.group_size, hp.max_len) == (c.rl.group_size, c.rl.max_new_tokens)
  c.loss.group_size = c.rl.group_size + 1
  with pytest.raises(ValueError, match=r"loss.group_size=5 differs from"):
    learner.loss_config(c, SPEC)
