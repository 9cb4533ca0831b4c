"""AMPO: the shaped off-policy term and the spec's 'guided' rollouts."""

import numpy as np
import pytest

from w2s_jax import methods, testing
from w2s_jax.methods import ampo

G, N, P, T = 4, 2, 3, 5  # group size, prompts, prompt width, new tokens
B = G * N
SPEC = methods.get("ampo")


def test_ampo_off_policy_rows_use_shaped_probability():
  model = testing.rl_model()
  batch = testing.rl_batch(G, N, P, T, 0)
  batch["rewards"][0] = [1, 0, 0, 1]
  batch["rewards"][1] = [0, 1, 1, 1]
  lp = testing.np_token_logprobs(model, batch)
  adv = testing.np_group_advantages(batch["rewards"]).reshape(B)
  batch["advantages"] = adv.astype(np.float32)
  batch["old_logprobs"] = lp.astype(np.float32)
  batch["off_policy"] = np.array([0, 1, 0, 0, 1, 0, 0, 0], np.float32)
  hp = ampo.AMPOHparams(
      agg="seq-mean-token-sum-norm", entropy_coef=0.0, dual_clip=10.0,
      epsilon_low=0.2, max_len=T,
  )  # fmt: skip
  loss, metrics, _ = testing.method_loss_and_grads(SPEC, model, batch, hp)
  mask = batch["completion_mask"][:, 1:] != 0
  a = batch["advantages"][:, None].astype(np.float64)
  p = np.exp(lp)
  pg = np.where(batch["off_policy"][:, None] != 0, -a * p / (p + 0.1), -a)
  want = np.where(mask, pg, 0).sum() / (B * T)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(
      float(metrics["ampo/off_policy_frac"]),
      mask[batch["off_policy"] != 0].sum() / mask.sum(),
      rtol=1e-6,
  )


def test_spec_and_bounds():
  assert SPEC.rollouts == "guided" and SPEC.policy_gradient
  assert SPEC.score_models(ampo.AMPOHparams()) == ()
  with pytest.raises(methods.HparamError, match=r"off_policy_gamma=0.0 .* > 0"):
    SPEC.hp({"off_policy_gamma": 0.0})
  with pytest.raises(methods.HparamError, match=r"entropy_coef=-1.0 .* >= 0"):
    SPEC.hp({"entropy_coef": -1.0})
  with pytest.raises(methods.HparamError, match=r"loss.beta_ref is not a"):
    SPEC.hp({"beta_ref": 0.04})  # AMPO has no reference
