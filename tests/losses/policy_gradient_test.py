"""Tests of w2s_jax.losses.policy_gradient (docs/methods.md, "Sampled-token estimators" / "GRPO" / "KDRL" / "AMPO")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import losses


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _batch(seed=0, b=4, length=6):
  rng = np.random.default_rng(seed)
  tok_lp = (-rng.random((b, length)) * 3).astype(np.float32)
  old = (tok_lp + rng.normal(size=(b, length)) * 0.4).astype(np.float32)
  ref = (tok_lp + rng.normal(size=(b, length)) * 0.5).astype(np.float32)
  adv = rng.normal(size=(b,)).astype(np.float32)
  mask = rng.random((b, length)) > 0.25
  mask[:, 0] = True
  return tok_lp, old, ref, adv, mask


def _weights(mask, mode, max_len=None):
  """float64 per-token aggregation weights, from the docs/methods.md, "Aggregation" table."""
  m = mask.astype(np.float64)
  rows = m.sum(-1) > 0
  if mode == "token-mean":
    return m / m.sum()
  n = rows.sum()
  if mode == "seq-mean-token-mean":
    return m / np.maximum(m.sum(-1, keepdims=True), 1) / n
  if mode == "seq-mean-token-sum":
    return m / n
  return m / (n * (max_len or m.shape[-1]))


# -------------------------------------------------------------- estimators
@pytest.mark.parametrize(
    "estimator,target", [("k1", "zero"), ("k2", "rkl"), ("k3", "fkl")]
)
def test_estimator_expected_gradient_on_one_categorical(estimator, target):
  rng = np.random.default_rng(1)
  z = rng.normal(size=6).astype(np.float32)
  lp_p = _log_softmax64(rng.normal(size=6))
  q = np.exp(_log_softmax64(z))
  p = np.exp(lp_p)

  def expected(z):  # Σ_v sg(q(v))·k(v): the on-policy expectation.
    lq = jax.nn.log_softmax(z)
    k = losses.sampled_kl(lq, lp_p.astype(np.float32), estimator=estimator)
    return jnp.sum(jax.lax.stop_gradient(jnp.exp(lq)) * k)

  g = np.asarray(jax.grad(expected)(jnp.asarray(z)))
  rkl = np.sum(q * (np.log(q) - lp_p))
  ref = {
      "zero": np.zeros(6),
      "rkl": q * (np.log(q) - lp_p - rkl),
      "fkl": q - p,
  }[target]
  np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
  if estimator in ("k1", "k3"):  # unbiased estimates of KL(q||p)
    np.testing.assert_allclose(float(expected(jnp.asarray(z))), rkl, 1e-5)


@pytest.mark.parametrize(
    "estimator,target", [("k1", "rkl"), ("k2", "rkl"), ("k3", "fkl")]
)
def test_kdrl_token_loss_expected_gradient(estimator, target):
  """KDRL: k1 as a reward and k2 give ∇RKL; k3 gives ∇FKL (docs/methods.md, "Sampled-token estimators")."""
  rng = np.random.default_rng(2)
  # Moderate logits keep k3 below its ±10 clamp, where it would be biased.
  z = (rng.normal(size=7) * 0.5).astype(np.float32)
  lp_p = _log_softmax64(rng.normal(size=7) * 0.5)
  q, p = np.exp(_log_softmax64(z)), np.exp(lp_p)

  def expected(z):
    lq = jax.nn.log_softmax(z)
    k = losses.kd_token_loss(lq, lp_p.astype(np.float32), estimator=estimator)
    return jnp.sum(jax.lax.stop_gradient(jnp.exp(lq)) * k)

  g = np.asarray(jax.grad(expected)(jnp.asarray(z)))
  rkl = np.sum(q * (np.log(q) - lp_p))
  ref = q * (np.log(q) - lp_p - rkl) if target == "rkl" else q - p
  np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_k3_is_nonnegative_zero_at_equality_and_clamped():
  rng = np.random.default_rng(3)
  lp = rng.normal(size=200).astype(np.float32) * 10
  ref = rng.normal(size=200).astype(np.float32) * 10
  k3 = np.asarray(losses.sampled_kl(lp, ref, estimator="k3"))
  d = np.clip(ref.astype(np.float64) - lp, -20, 20)
  np.testing.assert_allclose(
      k3, np.clip(np.exp(d) - d - 1, -10, 10), rtol=1e-5, atol=1e-6
  )
  assert np.all(k3 >= 0) and k3.max() == 10.0
  assert np.all(np.asarray(losses.sampled_kl(lp, lp, estimator="k3")) == 0.0)
  raw = losses.sampled_kl(
      np.float32(0.0), np.float32(3.0), estimator="k3", clamp=False
  )
  np.testing.assert_allclose(float(raw), np.exp(3.0) - 4.0, rtol=1e-6)


# -------------------------------------------------------------------- GRPO
@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_grpo_at_ratio_one_gradient_is_minus_advantage(mode):
  tok_lp, _, _, adv, mask = _batch(seed=4)
  f = lambda lp: losses.grpo_loss(lp, adv, mask, agg=mode)[0]
  v, g = jax.value_and_grad(f)(jnp.asarray(tok_lp))
  w = _weights(mask, mode)
  np.testing.assert_allclose(float(v), -np.sum(w * adv[:, None]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g), -w * adv[:, None], rtol=1e-5)


def _ref_pg(tok_lp, old, adv, eps_lo, eps_hi, c):
  ratio = np.exp(np.clip(tok_lp.astype(np.float64) - old, -20, 20))
  a = np.broadcast_to(adv[:, None], tok_lp.shape).astype(np.float64)
  l1, l2 = -ratio * a, -np.clip(ratio, 1 - eps_lo, 1 + eps_hi) * a
  pg = np.maximum(l1, l2)
  capped = (a < 0) & (pg > -c * a)
  pg = np.where(capped, -c * a, pg)
  # Only the unclipped, uncapped branch carries gradient: d(−ρA)/dlp = −ρA.
  live = (l1 >= l2) & ~capped
  grad = np.where(live, -ratio * a, 0.0)
  return ratio, a, pg, grad, capped


def test_grpo_clipped_objective_dual_clip_and_kl_match_reference():
  tok_lp, old, ref, adv, mask = _batch(seed=5)
  old = old.copy()
  old[0, 1] = tok_lp[0, 1] + 3.0  # ρ ≈ 0.05
  old[1, 1] = tok_lp[1, 1] - 2.0  # ρ ≈ 7.4
  adv = np.array([1.0, -1.5, 0.5, -0.2], np.float32)
  kw = dict(epsilon_low=0.2, epsilon_high=0.28, dual_clip=3.0)
  f = lambda lp: losses.grpo_loss(
      lp, adv, mask, old_tok_lp_BL=old, ref_tok_lp_BL=ref, beta_ref=0.04, **kw
  )
  (v, metrics), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(tok_lp))
  ratio, a, pg, grad, capped = _ref_pg(tok_lp, old, adv, 0.2, 0.28, 3.0)
  d = np.clip(ref.astype(np.float64) - tok_lp, -20, 20)
  k3 = np.clip(np.exp(d) - d - 1, -10, 10)
  dk3 = np.where(np.abs(ref.astype(np.float64) - tok_lp) < 20, 1 - np.exp(d), 0)
  w = _weights(mask, "token-mean")
  np.testing.assert_allclose(float(v), np.sum(w * (pg + 0.04 * k3)), rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(g), w * (grad + 0.04 * dk3), rtol=1e-4, atol=1e-7
  )
  high = (a > 0) & (ratio > 1.28)
  low = (a < 0) & (ratio < 0.8)
  np.testing.assert_allclose(
      float(metrics["grpo/clip_frac"]), (high | low)[mask].mean(), rtol=1e-6
  )
  np.testing.assert_allclose(
      float(metrics["grpo/dual_clip_frac"]), capped[mask].mean(), rtol=1e-6
  )
  assert capped[mask].any()
  np.testing.assert_allclose(float(metrics["grpo/kl"]), k3[mask].mean(), 1e-5)


def test_grpo_entropy_bonus():
  tok_lp, _, _, adv, mask = _batch(seed=6)
  ent = np.random.default_rng(0).random(tok_lp.shape).astype(np.float32)
  base, _ = losses.grpo_loss(tok_lp, adv, mask, agg="seq-mean-token-mean")
  bonus, m = losses.grpo_loss(
      tok_lp,
      adv,
      mask,
      agg="seq-mean-token-mean",
      entropy_BL=ent,
      entropy_coef=0.01,
      entropy_agg="token-mean",
  )
  np.testing.assert_allclose(
      float(base) - float(bonus), 0.01 * ent[mask].mean(), rtol=1e-5
  )
  np.testing.assert_allclose(float(m["grpo/entropy"]), ent[mask].mean(), 1e-6)


def test_grpo_masked_positions_are_neutral_and_empty_mask_is_zero():
  tok_lp, old, ref, adv, mask = _batch(seed=7)
  kw = dict(old_tok_lp_BL=old, ref_tok_lp_BL=ref, beta_ref=0.1, dual_clip=3.0)
  f = lambda lp: losses.grpo_loss(lp, adv, mask, **kw)[0]
  v, g = jax.value_and_grad(f)(jnp.asarray(tok_lp))
  lp2 = tok_lp.copy()
  lp2[~mask] = np.nan
  v2, g2 = jax.value_and_grad(f)(jnp.asarray(lp2))
  assert float(v2) == float(v)
  np.testing.assert_array_equal(np.asarray(g2), np.asarray(g))
  empty = np.zeros_like(mask)
  (v0, m0), g0 = jax.value_and_grad(
      lambda lp: losses.grpo_loss(lp, adv, empty, **kw), has_aux=True
  )(jnp.asarray(tok_lp))
  assert float(v0) == 0.0 and float(m0["grpo/empty_mask"]) == 1.0
  assert np.all(np.asarray(g0) == 0.0)
  assert all(np.isfinite(np.asarray(x)).all() for x in m0.values())


# -------------------------------------------------------------------- AMPO
def test_ampo_off_policy_shaping_gradient():
  tok_lp, old, _, adv, mask = _batch(seed=8)
  off = np.zeros_like(mask)
  off[1:3, :] = True  # two injected teacher solutions
  p = np.exp(tok_lp.astype(np.float64))

  def f(p_BL):
    return losses.ampo_loss(
        jnp.log(p_BL), adv, mask, off, old_tok_lp_BL=old, max_len=10
    )[0]

  g = np.asarray(jax.grad(f)(jnp.asarray(p, jnp.float32)))
  w = _weights(mask, "seq-mean-token-sum-norm", max_len=10)
  # ∂(−A·f(p))/∂p = −A·0.1/(p + 0.1)² on off-policy tokens.
  ref = -adv[:, None] * 0.1 / (p + 0.1) ** 2 * w
  np.testing.assert_allclose(g[off], ref[off], rtol=1e-4)
  # Value on off-policy tokens ignores the ratio to the (far) old policy.
  v, m = losses.ampo_loss(tok_lp, adv, mask, off, old_tok_lp_BL=old - 50.0)
  ratio, a, pg, _, _ = _ref_pg(tok_lp, old - 50.0, adv, 0.2, 0.2, 10.0)
  pg = np.where(off, -a * p / (p + 0.1), pg)
  np.testing.assert_allclose(
      float(v), np.sum(_weights(mask, "seq-mean-token-sum-norm") * pg), 1e-5
  )
  np.testing.assert_allclose(
      float(m["ampo/off_policy_frac"]), off[mask].mean(), rtol=1e-6
  )
  # A per-sequence off-policy flag broadcasts over the row.
  v_row, _ = losses.ampo_loss(
      tok_lp, adv, mask, off.any(-1), old_tok_lp_BL=old - 50.0
  )
  assert float(v_row) == float(v)


def test_shaping_derivative_autodiff():
  p = jnp.linspace(0.01, 0.99, 7)
  f = lambda p: jnp.sum(p / (p + 0.1))
  np.testing.assert_allclose(
      np.asarray(jax.grad(f)(p)), 0.1 / (np.asarray(p) + 0.1) ** 2, rtol=1e-5
  )


# -------------------------------------------------------------------- KDRL
def test_kdrl_beta_zero_equals_grpo_exactly():
  tok_lp, old, ref, adv, mask = _batch(seed=9)
  t_lp = ref - 0.3
  kw = dict(old_tok_lp_BL=old, epsilon_high=0.28, agg="seq-mean-token-mean")
  f_k = lambda lp: losses.kdrl_loss(lp, t_lp, adv, mask, beta=0.0, **kw)[0]
  f_g = lambda lp: losses.grpo_loss(lp, adv, mask, **kw)[0]
  vk, gk = jax.value_and_grad(f_k)(jnp.asarray(tok_lp))
  vg, gg = jax.value_and_grad(f_g)(jnp.asarray(tok_lp))
  assert float(vk) == float(vg)
  np.testing.assert_array_equal(np.asarray(gk), np.asarray(gg))


@pytest.mark.parametrize("estimator", losses.KL_ESTIMATORS)
def test_kdrl_kd_value_and_response_masking(estimator):
  tok_lp, _, ref, _, mask = _batch(seed=10)
  t_lp = ref
  correct = np.array([True, False, True, False])
  zero_adv = np.zeros(4, np.float32)  # isolates the KD term's gradient
  f = lambda lp: losses.kdrl_loss(
      lp,
      t_lp,
      zero_adv,
      mask,
      beta=0.5,
      estimator=estimator,
      kd_masking="response",
      correct_B=correct,
  )
  (v, m), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(tok_lp))
  g = np.asarray(g)
  assert np.all(g[correct] == 0.0)
  assert np.abs(g[~correct][mask[~correct]]).min() > 0
  r = t_lp.astype(np.float64) - tok_lp
  kd_tok = {
      "k1": -r * tok_lp,
      "k2": 0.5 * r**2,
      "k3": np.clip(np.exp(np.clip(r, -20, 20)) - r - 1, -10, 10),
  }[estimator]
  keep = mask & ~correct[:, None]
  np.testing.assert_allclose(float(m["kdrl/kd"]), kd_tok[keep].mean(), 1e-5)
  np.testing.assert_allclose(float(v), 0.5 * kd_tok[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(m["kdrl/rkl_k1"]), -r[keep].mean(), 1e-5)
  np.testing.assert_allclose(float(m["kdrl/keep_frac"]), 0.5)


def test_kdrl_group_masking_activates_iff_group_all_wrong():
  correct = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1], bool)
  keep = np.asarray(losses.kd_keep_mask(correct, "group", group_size=3))
  np.testing.assert_array_equal(keep, np.repeat([True, False, True, False], 3))
  np.testing.assert_array_equal(
      np.asarray(losses.kd_keep_mask(correct, "response")), ~correct
  )
  assert np.asarray(losses.kd_keep_mask(None, "none", batch=12)).all()


# KDRL's schedule (arXiv 2506.02208): 5e-3 annealed by 5e-5 per step to 1e-3.
PAPER_BETA = dict(beta_init=5e-3, beta_min=1e-3, decay=5e-5)


def test_kdrl_beta_schedule_and_traced_beta():
  got = [float(losses.kdrl_beta(t, **PAPER_BETA)) for t in (0, 40, 80, 200)]
  np.testing.assert_allclose(got, [5e-3, 3e-3, 1e-3, 1e-3], rtol=1e-6)
  const = {**PAPER_BETA, "decay": 0.0}
  assert float(losses.kdrl_beta(500, **const)) == pytest.approx(5e-3)
  tok_lp, _, ref, adv, mask = _batch(seed=11)

  @jax.jit
  def step(t):
    return losses.kdrl_loss(
        tok_lp, ref, adv, mask, beta=losses.kdrl_beta(t, **PAPER_BETA)
    )

  v, m = step(jnp.asarray(40))
  np.testing.assert_allclose(float(m["kdrl/beta"]), 3e-3, rtol=1e-6)
  np.testing.assert_allclose(
      float(v), float(m["grpo/loss"]) + 3e-3 * float(m["kdrl/kd"]), rtol=1e-6
  )


def test_bad_inputs_raise_clear_errors():
  tok_lp, old, ref, adv, mask = _batch(seed=12)
  with pytest.raises(ValueError, match=r"epsilon_low must be in \[0, 1\)"):
    losses.grpo_loss(tok_lp, adv, mask, epsilon_low=1.0)
  with pytest.raises(ValueError, match="dual_clip must be > 1"):
    losses.grpo_loss(tok_lp, adv, mask, dual_clip=1.0)
  with pytest.raises(ValueError, match="beta_ref > 0 needs ref_tok_lp_BL"):
    losses.grpo_loss(tok_lp, adv, mask, beta_ref=0.04)
  with pytest.raises(ValueError, match="entropy_coef != 0 needs entropy_BL"):
    losses.grpo_loss(tok_lp, adv, mask, entropy_coef=0.01)
  with pytest.raises(ValueError, match="advantages has shape"):
    losses.grpo_loss(tok_lp, adv[:3], mask)
  with pytest.raises(ValueError, match=r"mask_BL has shape \(4, 5\)"):
    losses.grpo_loss(tok_lp, adv, mask[:, :5])
  with pytest.raises(ValueError, match="old_tok_lp_BL shape"):
    losses.grpo_loss(tok_lp, adv, mask, old_tok_lp_BL=old[:, :5])
  with pytest.raises(ValueError, match="kd_masking must be one of"):
    losses.kdrl_loss(tok_lp, ref, adv, mask, beta=0.1, kd_masking="rows")
  with pytest.raises(ValueError, match="needs correct_B"):
    losses.kdrl_loss(tok_lp, ref, adv, mask, beta=0.1, kd_masking="response")
  with pytest.raises(ValueError, match="group_size dividing B=4"):
    losses.kdrl_loss(
        tok_lp,
        ref,
        adv,
        mask,
        beta=0.1,
        kd_masking="group",
        correct_B=np.ones(4, bool),
        group_size=3,
    )
  with pytest.raises(ValueError, match="beta must be >= 0"):
    losses.kdrl_loss(tok_lp, ref, adv, mask, beta=-0.1)
  with pytest.raises(ValueError, match="estimator must be one of"):
    losses.kdrl_loss(tok_lp, ref, adv, mask, beta=0.1, estimator="k4")
