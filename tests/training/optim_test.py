"""Schedules and the AdamW chain against independent numpy references."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from w2s_jax.training import optim


def test_cosine_with_warmup_values():
  s = optim.make_schedule(
      1.0, total_steps=110, warmup_steps=10, schedule="cosine"
  )
  for t in (0, 5, 10):
    assert float(s(t)) == pytest.approx(t / 10)
  for t in (10, 35, 60, 110):
    want = 0.5 * (1 + np.cos(np.pi * (t - 10) / 100))
    assert float(s(t)) == pytest.approx(want, abs=1e-6)


def test_linear_decay_to_min_ratio():
  s = optim.make_schedule(2.0, 100, 0, "linear", min_lr_ratio=0.1)
  assert float(s(0)) == pytest.approx(2.0)
  assert float(s(50)) == pytest.approx(1.1)
  assert float(s(100)) == pytest.approx(0.2)


def test_adamw_step_matches_numpy_and_skips_decay_on_vectors():
  tx, _ = optim.make_optimizer(
      lr=0.1, total_steps=10, schedule="constant", weight_decay=0.5, grad_clip=0
  )
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # First Adam step: m_hat/sqrt(v_hat) = g/|g| = 1 (eps negligible).
  adam = 0.1 * 2.0 / (2.0 + 1e-8)
  np.testing.assert_allclose(new["w"], 1 - adam - 0.1 * 0.5 * 1.0, rtol=1e-6)
  np.testing.assert_allclose(new["b"], 1 - adam, rtol=1e-6)


def test_global_norm_clipping():
  tx, _ = optim.make_optimizer(
      lr=1.0,
      total_steps=1,
      schedule="constant",
      grad_clip=1.0,
      b1=0.0,
      b2=0.0,
      eps=0.0,
  )
  # With b1=b2=0, Adam's update is sign-like, so test the clip stage directly.
  clip = optax.clip_by_global_norm(1.0)
  g = {"a": jnp.array([3.0, 4.0])}
  out, _ = clip.update(g, clip.init(g))
  np.testing.assert_allclose(out["a"], [0.6, 0.8], rtol=1e-6)
  assert tx is not None


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(lr=-1.0), r"learning rate must be >= 0"),
        (dict(schedule="exp"), r"schedule 'exp' is not one of"),
        (dict(warmup_steps=20), r"warmup_steps \(20\) must be in"),
    ],
)
def test_bad_schedule_arguments(kw, msg):
  args = dict(lr=1.0, total_steps=10, warmup_steps=0, schedule="cosine")
  args.update(kw)
  with pytest.raises(ValueError, match=msg):
    optim.make_schedule(**args)
