"""Tests of w2s_jax.losses.topk against numpy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import losses


def _softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl64(a, b):
  return np.sum(np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0), -1)


def _cache(zt, k, tau_rec, rng):
  """Teacher top-k ids (in shuffled order) and log-probs at τ_rec."""
  p = _softmax64(np.asarray(zt, np.float64) / tau_rec)
  ids = np.argsort(-p, axis=-1)[..., :k]
  ids = np.take_along_axis(ids, rng.permuted(ids, axis=-1).argsort(-1), -1)
  lp = np.log(np.take_along_axis(p, ids, -1))
  return ids.astype(np.int32), lp.astype(np.float32)


def _ref_topk(mode, zs, zt, ids, tau, tau_rec, name="fkl", beta=0.5):
  """float64 reference from raw teacher logits (independent of the cache)."""
  q_full = _softmax64(np.asarray(zs, np.float64) / tau)
  q_s = np.take_along_axis(q_full, ids, -1)
  if mode == "renormalized":
    p = _softmax64(
        np.take_along_axis(np.asarray(zt, np.float64), ids, -1) / tau
    )
    q = _softmax64(
        np.take_along_axis(np.asarray(zs, np.float64), ids, -1) / tau
    )
  else:
    p_full = _softmax64(np.asarray(zt, np.float64) / tau_rec)
    p_s = np.take_along_axis(p_full, ids, -1)
    if mode == "sparse_fkl":
      return np.sum(p_s * (np.log(p_s) - np.log(q_s)), -1)
    p = np.concatenate([p_s, 1 - p_s.sum(-1, keepdims=True)], -1)
    q = np.concatenate([q_s, 1 - q_s.sum(-1, keepdims=True)], -1)
  if name == "fkl":
    return _kl64(p, q)
  if name == "rkl":
    return _kl64(q, p)
  m = beta * p + (1 - beta) * q
  return beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)


def _inputs(seed=0, shape=(2, 3, 12), k=4, tau_rec=1.0):
  rng = np.random.default_rng(seed)
  zs = (rng.normal(size=shape) * 2).astype(np.float32)
  zt = (rng.normal(size=shape) * 2).astype(np.float32)
  ids, lp = _cache(zt, k, tau_rec, rng)
  mask = rng.random(shape[:-1]) > 0.3
  mask.flat[0] = True
  return zs, zt, ids, lp, mask


@pytest.mark.parametrize("mode", losses.TOPK_MODES)
def test_value_matches_float64_reference(mode):
  zs, zt, ids, lp, mask = _inputs(seed=1, tau_rec=0.7)
  tau = 0.7 if mode != "renormalized" else 1.3  # renormalized re-tempers
  d = losses.topk_token_divergence(
      zs, ids, lp, mode=mode, temperature=tau, teacher_temperature=0.7
  )
  ref = _ref_topk(mode, zs, zt, ids, tau, 0.7)
  np.testing.assert_allclose(np.asarray(d), ref, rtol=1e-5, atol=1e-6)
  loss, metrics = losses.topk_divergence(
      zs, ids, lp, mask, mode=mode, temperature=tau, teacher_temperature=0.7
  )
  expect = tau**2 * np.sum(ref * mask) / mask.sum()
  np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
  p = np.take_along_axis(_softmax64(zt / 0.7), ids, -1).sum(-1)
  np.testing.assert_allclose(
      float(metrics["distill/topk_mass"]), p[mask].mean(), rtol=1e-5
  )


@pytest.mark.parametrize("mode", ["renormalized", "tail_bucket"])
@pytest.mark.parametrize("name", ["rkl", "jsd"])
def test_other_divergences_on_the_compared_categories(mode, name):
  zs, zt, ids, lp, _ = _inputs(seed=2)
  d = losses.topk_token_divergence(
      zs, ids, lp, mode=mode, divergence=name, beta=0.3
  )
  ref = _ref_topk(mode, zs, zt, ids, 1.0, 1.0, name=name, beta=0.3)
  np.testing.assert_allclose(np.asarray(d), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", losses.TOPK_MODES)
def test_k_equal_vocab_equals_full_divergence(mode):
  zs, zt, ids, lp, mask = _inputs(seed=3, k=12)
  full, _ = losses.divergence("fkl", zs, zt, mask)
  top, _ = losses.topk_divergence(zs, ids, lp, mask, mode=mode)
  np.testing.assert_allclose(float(top), float(full), rtol=1e-5, atol=1e-6)


def test_tail_bucket_fkl_lower_bounds_full_fkl():
  zs, zt, ids, lp, _ = _inputs(seed=4, shape=(4, 5, 30), k=3)
  tail = losses.topk_token_divergence(zs, ids, lp, mode="tail_bucket")
  full = losses.token_divergence("fkl", zs, zt)
  assert np.all(np.asarray(tail) <= np.asarray(full) + 1e-6)
  assert np.any(np.asarray(tail) < np.asarray(full) - 1e-3)


@pytest.mark.parametrize("mode", losses.TOPK_MODES)
def test_gradient_matches_finite_differences(mode):
  zs, zt, ids, lp, mask = _inputs(seed=5, shape=(2, 2, 6), k=3)

  def ref(z):
    d = _ref_topk(mode, z, zt, ids, 1.0, 1.0)
    return np.sum(d * mask) / mask.sum()

  g = jax.grad(
      lambda z: losses.topk_divergence(z, ids, lp, mask, mode=mode)[0]
  )(jnp.asarray(zs))
  fd = np.zeros(zs.shape)
  x = zs.astype(np.float64)
  for i in np.ndindex(zs.shape):
    xp, xm = x.copy(), x.copy()
    xp[i] += 1e-6
    xm[i] -= 1e-6
    fd[i] = (ref(xp) - ref(xm)) / 2e-6
  np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-6)
  g_t = jax.grad(
      lambda t: losses.topk_divergence(zs, ids, t, mask, mode=mode)[0]
  )(jnp.asarray(lp))
  assert np.all(np.asarray(g_t) == 0.0)


@pytest.mark.parametrize("mode", losses.TOPK_MODES)
def test_padding_entries_drop_out(mode):
  zs, zt, ids, lp, mask = _inputs(seed=6, k=4)
  short = losses.topk_token_divergence(zs, ids[..., :3], lp[..., :3], mode=mode)
  lp_pad = lp.copy()
  lp_pad[..., 3] = -np.inf
  padded = losses.topk_token_divergence(zs, ids, lp_pad, mode=mode)
  np.testing.assert_allclose(np.asarray(padded), np.asarray(short), rtol=1e-5)


def test_masked_positions_with_garbage_are_neutral():
  zs, zt, ids, lp, mask = _inputs(seed=7)
  f = lambda z, i, l: losses.topk_divergence(z, i, l, mask, mode="tail_bucket")[
      0
  ]
  v, g = jax.value_and_grad(f)(jnp.asarray(zs), ids, lp)
  zs2, ids2, lp2 = zs.copy(), ids.copy(), lp.copy()
  zs2[~mask], ids2[~mask], lp2[~mask] = np.nan, 10_000, np.nan
  v2, g2 = jax.value_and_grad(f)(jnp.asarray(zs2), ids2, lp2)
  assert float(v2) == float(v)
  np.testing.assert_array_equal(np.asarray(g2), np.asarray(g))


def test_empty_mask_gives_zero_and_flag():
  zs, _, ids, lp, mask = _inputs(seed=8)
  loss, m = losses.topk_divergence(
      zs, ids, lp, np.zeros_like(mask), mode="renormalized"
  )
  assert float(loss) == 0.0 and float(m["distill/empty_mask"]) == 1.0


def test_bad_inputs_raise_clear_errors():
  zs, _, ids, lp, mask = _inputs(seed=9)
  kw = dict(teacher_temperature=1.0)
  with pytest.raises(ValueError, match="needs temperature == teacher_temp"):
    losses.topk_divergence(
        zs, ids, lp, mask, mode="tail_bucket", temperature=2.0, **kw
    )
  with pytest.raises(ValueError, match="'sparse_fkl' is a forward KL"):
    losses.topk_divergence(
        zs, ids, lp, mask, mode="sparse_fkl", divergence="rkl", **kw
    )
  with pytest.raises(ValueError, match="mode must be one of"):
    losses.topk_divergence(zs, ids, lp, mask, mode="renorm", **kw)
  with pytest.raises(ValueError, match="must be an integer array"):
    losses.topk_divergence(
        zs, ids.astype(np.float32), lp, mask, mode="renormalized", **kw
    )
  with pytest.raises(ValueError, match="must have the same"):
    losses.topk_divergence(zs, ids, lp[..., :2], mask, mode="renormalized")
  with pytest.raises(ValueError, match="teacher_temperature .* must be"):
    losses.topk_divergence(
        zs, ids, lp, mask, mode="renormalized", teacher_temperature=0.0
    )
  with pytest.raises(ValueError, match=r"mask has shape \(3,\)"):
    losses.topk_divergence(zs, ids, lp, mask[0], mode="renormalized")
