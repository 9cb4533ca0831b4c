"""GRPO / Dr.GRPO / DAPO: the spec, its hparams and the loss adapter."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import config_lib, losses, methods, testing
from w2s_jax.methods import grpo

G, N, P, T = 4, 2, 3, 5  # group size, prompts, prompt width, new tokens
B, L = G * N, P + T
ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SPEC = methods.get("grpo")


def _batch(seed=0):
  batch = testing.rl_batch(G, N, P, T, seed)
  batch["rewards"][0] = [1, 0, 0, 1]  # non-constant groups
  batch["rewards"][1] = [0, 1, 1, 1]
  return batch


def _hp(**kw):
  base = dict(
      agg="token-mean",
      epsilon_low=0.2,
      epsilon_high=0.28,
      dual_clip=3.0,
      beta_ref=0.0,
      max_len=T,
  )
  return grpo.GRPOHparams(**{**base, **kw})


def _grads(model, batch, hp, norm_batch=None):
  return testing.method_loss_and_grads(
      SPEC, model, batch, hp, norm_batch=norm_batch
  )


@pytest.mark.parametrize(
    "agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_grpo_matches_float64_reference(agg):
  model = testing.rl_model()
  batch = _batch()
  lp = testing.np_token_logprobs(model, batch)
  mask = batch["completion_mask"][:, 1:] != 0
  rng = np.random.default_rng(1)
  # Old log-probs away from the current ones, so every clip branch fires.
  old = lp + rng.normal(0, 0.4, size=lp.shape)
  ref = lp + rng.normal(0, 0.3, size=lp.shape)
  adv = testing.np_group_advantages(batch["rewards"]).reshape(B)
  batch["advantages"] = adv.astype(np.float32)
  batch["old_logprobs"] = old.astype(np.float32)
  batch["ref_logprobs"] = ref.astype(np.float32)
  hp = _hp(agg=agg, beta_ref=0.04)
  loss, metrics, g = _grads(model, batch, hp)
  # float64 reference (docs/methods.md, "GRPO" and "Aggregation").
  ratio = np.exp(np.clip(lp - old, -20, 20))
  a = adv[:, None]
  pg = -np.minimum(ratio * a, np.clip(ratio, 0.8, 1.28) * a)
  pg = np.where(a < 0, np.minimum(pg, -3.0 * a), pg)
  d = np.clip(ref - lp, -20, 20)
  k3 = np.clip(np.exp(d) - d - 1, -10, 10)
  per = np.where(mask, pg + 0.04 * k3, 0.0)
  if agg == "token-mean":
    want = per.sum() / mask.sum()
  elif agg == "seq-mean-token-mean":
    want = np.mean(per.sum(-1) / mask.sum(-1))
  else:
    want = per.sum() / (B * T)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5)
  assert 0 < float(metrics["grpo/clip_frac"]) < 1
  # Four micro-batches with uneven token counts and the step-global
  # normalisers sum to the same loss and gradient.
  loss4, g4 = 0.0, None
  for i in range(4):
    rows = slice(2 * i, 2 * i + 2)
    sub = {k: v[rows] for k, v in batch.items() if k != "rewards"}
    li, _, gi = _grads(model, sub, hp, norm_batch=batch)
    loss4 += float(li)
    g4 = gi if g4 is None else jax.tree.map(jnp.add, g4, gi)
  np.testing.assert_allclose(loss4, float(loss), rtol=1e-5)
  np.testing.assert_allclose(
      testing.flat(g4), testing.flat(g), rtol=1e-4, atol=1e-7
  )


def test_constant_reward_groups_give_zero_gradient():
  model = testing.rl_model()
  batch = _batch()
  batch["rewards"][:] = 1.0
  adv = np.asarray(losses.group_advantages(batch["rewards"]))
  assert np.all(adv == 0) and np.all(np.isfinite(adv))
  batch["advantages"] = adv.reshape(B)
  lp = testing.np_token_logprobs(model, batch)
  batch["old_logprobs"] = lp.astype(np.float32) + 0.1
  loss, _, g = _grads(model, batch, _hp())
  assert float(loss) == 0.0
  assert np.all(testing.flat(g) == 0.0)


def test_spec_scores_the_reference_only_when_its_kl_is_on():
  assert SPEC.score_models(_hp(beta_ref=0.04)) == ("ref",)
  assert SPEC.score_models(_hp(beta_ref=0.0)) == ()
  assert SPEC.policy_gradient and SPEC.rollouts == "student"
  assert SPEC.job == "rl" and SPEC.data == "prompts" and not SPEC.frozen


def test_variants_are_presets_of_the_same_hparams():
  got = {
      v: config_lib.load(os.path.join(ROOT, f"configs/grpo.py:variant={v}"))
      for v in grpo.VARIANTS
  }
  for v, c in got.items():
    assert c.method == "grpo"
    assert SPEC.hp(c.loss) == grpo.GRPOHparams(**grpo.VARIANTS[v])
  assert grpo.GRPOHparams() == SPEC.hp(got["grpo"].loss)
  assert (got["drgrpo"].loss.agg, got["drgrpo"].loss.beta_ref) == (
      "seq-mean-token-sum-norm",
      0.0,
  )
  assert got["dapo"].loss.epsilon_high == 0.28


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("epsilon_low", 1.5, r"loss.epsilon_low=1.5 is invalid .*\[0, 1\)"),
        ("dual_clip", 1.0, r"loss.dual_clip=1.0 .* 0 \(off\) or > 1"),
        ("beta_ref", -0.1, r"loss.beta_ref=-0.1 .* >= 0"),
        ("kl_estimator", "k4", r"loss.kl_estimator='k4' .* one of"),
        ("agg", "sum", r"loss.agg='sum' .* one of"),
        ("pg_temperature", 0.0, r"loss.pg_temperature=0.0 .* > 0"),
        ("epsilon", 0.2, r"loss.epsilon is not a hyperparameter of method"),
        ("kd", True, r"loss.kd is not a hyperparameter of method 'grpo'"),
    ],
)
def test_bad_loss_keys_name_the_key_and_the_bound(key, value, msg):
  with pytest.raises(methods.HparamError, match=msg):
    SPEC.hp({**grpo.GRPOHparams().to_config(), key: value})


def test_a_misspelt_override_fails_when_the_config_is_built():
  c = config_lib.load(os.path.join(ROOT, "configs/grpo.py"))
  with pytest.raises(ValueError, match="unknown config key 'loss.epsilon'"):
    config_lib.check_override_keys(c, ["--config.loss.epsilon=0.1"])
  with pytest.raises(TypeError):
    c.loss.dual_clip = "three"  # the loss section is type-safe
