"""Tests of w2s_jax.losses.divergences against numpy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import losses
from w2s_jax.losses import divergences

NAMES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")


# ---------------------------------------------------------------- references
def _softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl64(a, b):
  return np.sum(np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0), -1)


def _ref_token(name, zs, zt, tau=1.0, beta=0.5, alpha=0.1):
  """Per-position divergence in float64 from probabilities (not log space)."""
  q, p = _softmax64(np.asarray(zs, np.float64) / tau), _softmax64(
      np.asarray(zt, np.float64) / tau
  )
  if name == "fkl":
    return _kl64(p, q)
  if name == "rkl":
    return _kl64(q, p)
  if name == "jsd":
    if beta == 0:
      return _kl64(p, q)
    if beta == 1:
      return _kl64(q, p)
    m = beta * p + (1 - beta) * q
    return beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)
  if name == "skl":
    return _kl64(p, alpha * p + (1 - alpha) * q)
  if name == "srkl":
    return _kl64(q, (1 - alpha) * p + alpha * q)
  return 0.5 * np.abs(p - q).sum(-1)


def _ref_loss(name, zs, zt, mask, tau=1.0, tau_sq=True, **kw):
  d = _ref_token(name, zs, zt, tau, **kw)
  m = np.asarray(mask, np.float64)
  return (tau**2 if tau_sq else 1.0) * np.sum(d * m) / max(m.sum(), 1.0)


def _fd_grad(f, x, h=1e-6):
  """Central finite differences of a float64 scalar function."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[i] += h
    xm[i] -= h
    g[i] = (f(xp) - f(xm)) / (2 * h)
  return g


def _inputs(seed=0, shape=(2, 3, 7), scale=2.0):
  rng = np.random.default_rng(seed)
  zs = rng.normal(size=shape) * scale
  zt = rng.normal(size=shape) * scale
  mask = rng.random(shape[:-1]) > 0.3
  mask.flat[0] = True
  return zs.astype(np.float32), zt.astype(np.float32), mask


# --------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_value_matches_float64_reference(name, tau):
  zs, zt, mask = _inputs()
  loss, metrics = losses.divergence(
      name, zs, zt, mask, temperature=tau, beta=0.3, alpha=0.2
  )
  ref = _ref_loss(name, zs, zt, mask, tau=tau, beta=0.3, alpha=0.2)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-6, atol=1e-7)
  np.testing.assert_allclose(
      float(metrics[f"distill/{name}"]), ref / tau**2, rtol=2e-6, atol=1e-7
  )
  assert float(metrics["distill/num_tokens"]) == mask.sum()
  if tau != 1.0:
    ref1 = _ref_loss(name, zs, zt, mask, tau=1.0, beta=0.3, alpha=0.2)
    np.testing.assert_allclose(
        float(metrics[f"distill/{name}_t1"]), ref1, rtol=2e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name):
  zs, zt, mask = _inputs(seed=1, shape=(2, 2, 5))
  kw = dict(tau=1.5, beta=0.3, alpha=0.2)
  g = jax.grad(
      lambda z: losses.divergence(
          name, z, zt, mask, temperature=1.5, beta=0.3, alpha=0.2
      )[0]
  )(jnp.asarray(zs))
  ref = _fd_grad(lambda z: _ref_loss(name, z, zt, mask, **kw), zs)
  np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=1e-6)
  # Positions outside the mask get exactly zero gradient.
  assert np.all(np.asarray(g)[~mask] == 0.0)


def test_jsd_endpoints_symmetry_and_small_beta_limit():
  zs, zt, mask = _inputs(seed=2)
  fkl = _ref_loss("fkl", zs, zt, mask)
  rkl = _ref_loss("rkl", zs, zt, mask)
  j0, _ = losses.jsd(zs, zt, mask, beta=0.0)
  j1, _ = losses.jsd(zs, zt, mask, beta=1.0)
  np.testing.assert_allclose(float(j0), fkl, rtol=2e-6)
  np.testing.assert_allclose(float(j1), rkl, rtol=2e-6)
  half, _ = losses.jsd(zs, zt, mask, beta=0.5)
  swapped, _ = losses.jsd(zt, zs, mask, beta=0.5)
  np.testing.assert_allclose(float(half), float(swapped), rtol=1e-6)
  # JSD(ε)/ε → FKL: the mixture itself vanishes at the endpoint, so β = 0 is
  # a special case, approached only after dividing by ε.
  errs = []
  for eps in (1e-2, 1e-3, 1e-4):
    v, _ = losses.jsd(zs, zt, mask, beta=eps)
    ref = _ref_loss("jsd", zs, zt, mask, beta=eps)
    np.testing.assert_allclose(float(v), ref, rtol=1e-4)
    errs.append(abs(float(v) / eps - fkl))
  assert errs[0] > errs[1] > errs[2] and errs[2] < 0.01 * fkl


def test_skew_endpoints():
  zs, zt, mask = _inputs(seed=3)
  s0, _ = losses.skew_kl(zs, zt, mask, alpha=0.0)
  r0, _ = losses.skew_reverse_kl(zs, zt, mask, alpha=0.0)
  np.testing.assert_allclose(float(s0), _ref_loss("fkl", zs, zt, mask), 2e-6)
  np.testing.assert_allclose(float(r0), _ref_loss("rkl", zs, zt, mask), 2e-6)
  s1, _ = losses.skew_kl(zs, zt, mask, alpha=1.0)
  assert float(s1) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_nonnegative_and_zero_for_matching_distributions(name):
  zs, zt, _ = _inputs(seed=4, shape=(4, 6, 11), scale=4.0)
  d = losses.token_divergence(name, zs, zt, beta=0.3, alpha=0.2)
  assert np.all(np.asarray(d) >= -1e-6)
  # Identical distributions, including logits shifted by a constant.
  shift = np.arange(24, dtype=np.float32).reshape(4, 6, 1)
  same = losses.token_divergence(name, zs + shift, zs, beta=0.3, alpha=0.2)
  np.testing.assert_allclose(np.asarray(same), 0.0, atol=2e-6)


@pytest.mark.parametrize("name", NAMES)
def test_teacher_gets_exactly_zero_gradient(name):
  zs, zt, mask = _inputs(seed=5)
  g = jax.grad(lambda t: losses.divergence(name, zs, t, mask)[0])(
      jnp.asarray(zt)
  )
  assert np.all(np.asarray(g) == 0.0)


def test_masked_positions_cannot_change_loss_or_gradient():
  zs, zt, mask = _inputs(seed=6)
  f = lambda s, t: losses.divergence("jsd", s, t, mask, temperature=2.0)[0]
  v, g = jax.value_and_grad(f)(jnp.asarray(zs), jnp.asarray(zt))
  zs2, zt2 = zs.copy(), zt.copy()
  zs2[~mask] = np.nan
  zt2[~mask] = 1e30
  v2, g2 = jax.value_and_grad(f)(jnp.asarray(zs2), jnp.asarray(zt2))
  assert float(v2) == float(v)
  np.testing.assert_array_equal(np.asarray(g2), np.asarray(g))


@pytest.mark.parametrize("agg", losses.AGG_MODES)
def test_empty_mask_gives_zero_loss_and_flag(agg):
  zs, zt, _ = _inputs(seed=7)
  mask = np.zeros(zs.shape[:-1], bool)
  f = lambda s: losses.divergence("fkl", s, zt, mask, agg=agg)
  (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(zs))
  assert float(loss) == 0.0
  assert float(metrics["distill/empty_mask"]) == 1.0
  assert np.all(np.asarray(g) == 0.0)
  assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())


def test_tau_sq_flag_scales_by_tau_squared():
  zs, zt, mask = _inputs(seed=8)
  a, _ = losses.kl_divergence(zs, zt, mask, temperature=3.0, tau_sq=True)
  b, _ = losses.kl_divergence(zs, zt, mask, temperature=3.0, tau_sq=False)
  np.testing.assert_allclose(float(a), 9.0 * float(b), rtol=1e-6)
  np.testing.assert_allclose(
      float(b), _ref_loss("fkl", zs, zt, mask, tau=3.0, tau_sq=False), 2e-6
  )


def test_wrappers_match_dispatcher_and_metric_keys():
  zs, zt, mask = _inputs(seed=9)
  cases = [
      (losses.kl_divergence(zs, zt, mask, direction="forward"), "fkl"),
      (losses.kl_divergence(zs, zt, mask, direction="reverse"), "rkl"),
      (losses.jsd(zs, zt, mask, beta=0.5), "jsd"),
      (losses.skew_kl(zs, zt, mask, alpha=0.1), "skl"),
      (losses.skew_reverse_kl(zs, zt, mask, alpha=0.1), "srkl"),
      (losses.tvd(zs, zt, mask), "tvd"),
  ]
  for (loss, metrics), name in cases:
    ref = _ref_loss(name, zs, zt, mask, beta=0.5, alpha=0.1)
    np.testing.assert_allclose(float(loss), ref, rtol=2e-6, atol=1e-7)
    assert f"distill/{name}" in metrics and "distill/loss" in metrics


def test_flat_and_batched_leading_shapes_agree():
  zs, zt, mask = _inputs(seed=10, shape=(3, 4, 9))
  a, _ = losses.divergence("rkl", zs, zt, mask)
  b, _ = losses.divergence(
      "rkl", zs.reshape(12, 9), zt.reshape(12, 9), mask.reshape(12)
  )
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_vocab_size_slices_padded_widths():
  zs, zt, mask = _inputs(seed=11, shape=(2, 3, 10))
  rng = np.random.default_rng(0)
  zs_pad = np.concatenate([zs, rng.normal(size=(2, 3, 2))], -1)  # 12 wide
  zt_pad = np.concatenate([zt, rng.normal(size=(2, 3, 6))], -1)  # 16 wide
  loss, _ = losses.divergence("fkl", zs_pad, zt_pad, mask, vocab_size=10)
  np.testing.assert_allclose(
      float(loss), _ref_loss("fkl", zs, zt, mask), rtol=2e-6
  )
  with pytest.raises(ValueError, match="vocab width 12.*pass vocab_size"):
    losses.divergence("fkl", zs_pad, zt_pad, mask)
  with pytest.raises(
      ValueError, match=r"vocab_size must be an int in \[1, 12\]"
  ):
    losses.divergence("fkl", zs_pad, zt_pad, mask, vocab_size=13)


def test_negative_infinity_logits_are_safe():
  """Vocab entries masked to -inf in both models contribute nothing."""
  zs, zt, mask = _inputs(seed=12, shape=(2, 3, 8))
  pad = np.full((2, 3, 3), -np.inf, np.float32)
  zs_inf = np.concatenate([zs, pad], -1)
  zt_inf = np.concatenate([zt, pad], -1)
  for name in NAMES:
    f = lambda s, name=name: losses.divergence(name, s, zt_inf, mask)[0]
    v, g = jax.value_and_grad(f)(jnp.asarray(zs_inf))
    ref = _ref_loss(name, zs, zt, mask)
    np.testing.assert_allclose(float(v), ref, rtol=2e-6, atol=1e-7)
    assert np.isfinite(np.asarray(g)).all()
    assert np.all(np.asarray(g)[..., 8:] == 0.0)


def test_jit_and_bfloat16_inputs():
  zs, zt, mask = _inputs(seed=13)
  f = jax.jit(lambda s, t: losses.divergence("fkl", s, t, mask)[0])
  v = f(jnp.asarray(zs, jnp.bfloat16), jnp.asarray(zt, jnp.bfloat16))
  assert v.dtype == jnp.float32
  zs16 = np.asarray(jnp.asarray(zs, jnp.bfloat16).astype(jnp.float32))
  zt16 = np.asarray(jnp.asarray(zt, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(
      float(v), _ref_loss("fkl", zs16, zt16, mask), rtol=2e-6
  )


def test_bad_inputs_raise_clear_errors():
  zs, zt, mask = _inputs(seed=14)
  with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
    losses.jsd(zs, zt, mask, beta=1.5)
  with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
    losses.skew_kl(zs, zt, mask, alpha=-0.1)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.kl_divergence(zs, zt, mask, temperature=0.0)
  with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
    losses.tvd(zs, zt, mask[:, :2])
  with pytest.raises(ValueError, match="divergence name must be one of"):
    losses.divergence("kl", zs, zt, mask)
  with pytest.raises(ValueError, match="direction must be 'forward' or"):
    losses.kl_divergence(zs, zt, mask, direction="fwd")
  with pytest.raises(ValueError, match="must share their leading"):
    losses.divergence("fkl", zs, zt[:1], mask)
  with pytest.raises(ValueError, match="beta must be a Python float"):
    divergences.logprob_divergence("jsd", zs, zt, beta=jnp.asarray(0.5))
