"""Tests of w2s_jax.losses.sequence: SFT, REDI, DPO, SimPO (docs/methods.md, "SFT" / "REDI, DPO, SimPO")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from w2s_jax import losses


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _log_sigmoid64(x):
  return -np.logaddexp(0.0, -x)


def _sft_batch(seed=0, b=3, length=6, v=9):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, length, v)).astype(np.float32) * 2
  targets = rng.integers(0, v, size=(b, length)).astype(np.int32)
  # Prompt positions first, then the completion (EOS last), then padding.
  mask = np.zeros((b, length), bool)
  mask[0, 2:6] = True
  mask[1, 1:4] = True
  mask[2, 3:5] = True
  return logits, targets, mask


def _pairs(seed=0, b=4, lw=5, ll=7):
  rng = np.random.default_rng(seed)
  lp_w = -rng.random((b, lw)).astype(np.float32) * 3
  lp_l = -rng.random((b, ll)).astype(np.float32) * 3
  mw = np.zeros((b, lw), bool)
  ml = np.zeros((b, ll), bool)
  for i in range(b):
    mw[i, : rng.integers(1, lw + 1)] = True
    ml[i, : rng.integers(1, ll + 1)] = True
  return lp_w, mw, lp_l, ml


def test_token_logprobs_and_entropy_match_reference():
  logits, targets, _ = _sft_batch()
  lp = _log_softmax64(logits / 0.7)
  got = losses.token_logprobs(logits, targets, temperature=0.7)
  ref = np.take_along_axis(lp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5)
  ent = losses.token_entropy(logits, temperature=0.7)
  np.testing.assert_allclose(
      np.asarray(ent), -(np.exp(lp) * lp).sum(-1), rtol=1e-5
  )


def test_sft_equals_optax_and_reference_on_completion_slice():
  logits, targets, mask = _sft_batch()
  loss, metrics = losses.sft_cross_entropy(logits, targets, mask)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits)[mask], jnp.asarray(targets)[mask]
  )
  np.testing.assert_allclose(float(loss), float(jnp.mean(ce)), rtol=1e-6)
  nll = -np.take_along_axis(_log_softmax64(logits), targets[..., None], -1)
  np.testing.assert_allclose(float(loss), nll[..., 0][mask].mean(), rtol=1e-6)
  hits = logits.argmax(-1) == targets
  np.testing.assert_allclose(float(metrics["sft/accuracy"]), hits[mask].mean())


def test_sft_prompt_and_padding_cannot_change_loss_and_eos_gets_gradient():
  logits, targets, mask = _sft_batch(seed=1)
  f = lambda z, t: losses.sft_cross_entropy(z, t, mask)[0]
  v, g = jax.value_and_grad(f)(jnp.asarray(logits), targets)
  logits2, targets2 = logits.copy(), targets.copy()
  logits2[~mask] = np.nan
  targets2[~mask] = 12345  # out-of-range prompt/pad labels
  v2, g2 = jax.value_and_grad(f)(jnp.asarray(logits2), targets2)
  assert float(v2) == float(v)
  np.testing.assert_array_equal(np.asarray(g2), np.asarray(g))
  # The last completion position of row 0 is the EOS target.
  eos_grad = np.asarray(g)[0, 5]
  assert np.abs(eos_grad).max() > 1e-3
  assert np.all(np.asarray(g)[~mask] == 0.0)


def test_redi_matches_reference_and_gradient():
  lp_w, mw, lp_l, ml = _pairs(seed=2)
  loss, metrics = losses.redi(lp_w, mw, lp_l, ml, alpha=0.8)
  s_w = (lp_w * mw).sum(-1) / mw.sum(-1)
  s_l = (lp_l * ml).sum(-1) / ml.sum(-1)
  np.testing.assert_allclose(
      float(loss), np.mean(-s_w + 0.8 * s_l), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(float(metrics["redi/s_w"]), s_w.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["redi/s_l"]), s_l.mean(), rtol=1e-6)
  gw, gl = jax.grad(
      lambda a, b: losses.redi(a, mw, b, ml, alpha=0.8)[0], argnums=(0, 1)
  )(lp_w, lp_l)
  b = lp_w.shape[0]
  np.testing.assert_allclose(
      np.asarray(gw), -1.0 * mw / mw.sum(-1, keepdims=True) / b, rtol=1e-6
  )
  np.testing.assert_allclose(
      np.asarray(gl), 0.8 * ml / ml.sum(-1, keepdims=True) / b, rtol=1e-6
  )


def test_redi_alpha_zero_equals_sft_on_positives():
  logits, targets, mask = _sft_batch(seed=3)
  tok_lp = losses.token_logprobs(logits, targets)
  lp_l, ml = np.zeros((3, 4), np.float32), np.ones((3, 4), bool)
  redi, _ = losses.redi(tok_lp, mask, lp_l, ml, alpha=0.0)
  sft, _ = losses.sft_cross_entropy(
      logits, targets, mask, agg="seq-mean-token-mean"
  )
  np.testing.assert_allclose(float(redi), float(sft), rtol=1e-6)
  # With equal lengths this is also the token-mean SFT loss.
  eq = np.zeros_like(mask)
  eq[:, 1:4] = True
  redi_eq, _ = losses.redi(tok_lp, eq, lp_l, ml, alpha=0.0)
  sft_eq, _ = losses.sft_cross_entropy(logits, targets, eq)
  np.testing.assert_allclose(float(redi_eq), float(sft_eq), rtol=1e-6)


def test_dpo_is_log2_at_reference_and_matches_reference():
  lp_w, mw, lp_l, ml = _pairs(seed=4)
  loss, m = losses.dpo(lp_w, mw, lp_l, ml, lp_w, lp_l, beta=0.1)
  np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-6)
  assert float(m["dpo/reward_margin"]) == 0.0
  rng = np.random.default_rng(0)
  ref_w = (lp_w + rng.normal(size=lp_w.shape)).astype(np.float32)
  ref_l = (lp_l + rng.normal(size=lp_l.shape)).astype(np.float32)
  x = 0.5 * (
      ((lp_w - ref_w) * mw).sum(-1) - ((lp_l - ref_l) * ml).sum(-1)
  ).astype(np.float64)
  for eps in (0.0, 0.1):
    loss, _ = losses.dpo(
        lp_w, mw, lp_l, ml, ref_w, ref_l, beta=0.5, label_smoothing=eps
    )
    ref = np.mean(-(1 - eps) * _log_sigmoid64(x) - eps * _log_sigmoid64(-x))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  # Sequence-level reference sums give the same loss as token-level ones.
  seq, _ = losses.dpo(
      lp_w, mw, lp_l, ml, (ref_w * mw).sum(-1), (ref_l * ml).sum(-1), beta=0.5
  )
  np.testing.assert_allclose(float(seq), np.mean(-_log_sigmoid64(x)), 1e-5)
  # Gradient: ∂/∂tok_lp_w = −β σ(−x) m_w / B.
  g = jax.grad(
      lambda a: losses.dpo(a, mw, lp_l, ml, ref_w, ref_l, beta=0.5)[0]
  )(lp_w)
  sig = 1.0 / (1.0 + np.exp(x))
  np.testing.assert_allclose(
      np.asarray(g), -0.5 * sig[:, None] * mw / 4, rtol=1e-5
  )


def test_simpo_matches_reference_and_small_beta_limit_is_redi():
  lp_w, mw, lp_l, ml = _pairs(seed=5)
  s_w = (lp_w * mw).sum(-1) / mw.sum(-1)
  s_l = (lp_l * ml).sum(-1) / ml.sum(-1)
  loss, _ = losses.simpo(lp_w, mw, lp_l, ml, beta=2.0, gamma=1.0)
  ref = np.mean(-_log_sigmoid64(2.0 * (s_w - s_l) - 1.0))
  np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
  beta = 1e-4
  g_simpo = jax.grad(
      lambda a, b: losses.simpo(a, mw, b, ml, beta=beta, gamma=0.0)[0],
      argnums=(0, 1),
  )(lp_w, lp_l)
  g_redi = jax.grad(
      lambda a, b: losses.redi(a, mw, b, ml, alpha=1.0)[0], argnums=(0, 1)
  )(lp_w, lp_l)
  for gs, gr in zip(g_simpo, g_redi):
    np.testing.assert_allclose(
        (2.0 / beta) * np.asarray(gs), np.asarray(gr), rtol=1e-3, atol=1e-7
    )


def test_pairwise_micro_batches_with_global_normalizer():
  lp_w, mw, lp_l, ml = _pairs(seed=6, b=5)
  for fn in (
      lambda a, b, c, d, **k: losses.redi(a, b, c, d, **k),
      lambda a, b, c, d, **k: losses.simpo(a, b, c, d, **k),
  ):
    full, _ = fn(lp_w, mw, lp_l, ml)
    parts = sum(
        float(fn(lp_w[s], mw[s], lp_l[s], ml[s], normalizer=5.0)[0])
        for s in (slice(0, 1), slice(1, 4), slice(4, 5))
    )
    np.testing.assert_allclose(parts, float(full), rtol=1e-6)


def test_empty_pairs_are_zero_and_flagged():
  lp_w, mw, lp_l, ml = _pairs(seed=7)
  z_w, z_l = np.zeros_like(mw), np.zeros_like(ml)
  for fn, ns in (
      (lambda: losses.redi(lp_w, z_w, lp_l, z_l), "redi"),
      (lambda: losses.simpo(lp_w, z_w, lp_l, z_l), "simpo"),
      (lambda: losses.dpo(lp_w, z_w, lp_l, z_l, lp_w, lp_l), "dpo"),
  ):
    loss, m = fn()
    assert float(loss) == 0.0 and float(m[f"{ns}/empty_mask"]) == 1.0
  # A padding pair (both masks empty) or a half-empty pair does not count.
  pad = lambda x: np.concatenate([x, np.zeros_like(x[:1])])
  a, _ = losses.redi(lp_w, mw, lp_l, ml)
  b, _ = losses.redi(pad(lp_w), pad(mw), pad(lp_l), pad(ml))
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  half = np.concatenate([mw, mw[:1]])
  c, m = losses.redi(pad(lp_w), half, pad(lp_l), pad(ml))
  np.testing.assert_allclose(float(c), float(a), rtol=1e-6)
  assert float(m["redi/num_pairs"]) == 4.0


def test_bad_inputs_raise_clear_errors():
  lp_w, mw, lp_l, ml = _pairs(seed=8)
  with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
    losses.redi(lp_w, mw, lp_l, ml, alpha=1.2)
  with pytest.raises(ValueError, match="beta must be > 0"):
    losses.simpo(lp_w, mw, lp_l, ml, beta=0.0)
  with pytest.raises(ValueError, match="beta must be > 0"):
    losses.dpo(lp_w, mw, lp_l, ml, lp_w, lp_l, beta=-1.0)
  with pytest.raises(
      ValueError, match=r"label_smoothing must lie in \[0, 0.5\)"
  ):
    losses.dpo(lp_w, mw, lp_l, ml, lp_w, lp_l, label_smoothing=0.5)
  with pytest.raises(ValueError, match=r"chosen_mask has shape \(4, 4\)"):
    losses.redi(lp_w, mw[:, :4], lp_l, ml)
  with pytest.raises(ValueError, match="same number of pairs"):
    losses.redi(lp_w, mw, lp_l[:3], ml[:3])
  with pytest.raises(ValueError, match="ref_chosen_logp has shape"):
    losses.dpo(lp_w, mw, lp_l, ml, lp_w[:, :2], lp_l)
  logits, targets, mask = _sft_batch()
  with pytest.raises(ValueError, match="targets_BL shape"):
    losses.token_logprobs(logits, targets[:, :3])
  with pytest.raises(ValueError, match=r"mask_BL has shape \(3, 5\)"):
    losses.sft_cross_entropy(logits, targets, mask[:, :5])
