"""Offline KD (w2s_jax/methods/kd.py): the fused-teacher loss against a
float64 reference (dense and vocab-chunked, both mask modes), and the typed
hyperparameters shared by ``distill`` and ``distill_cache``."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import methods, models
from w2s_jax.methods import kd

V, L, B, P = 24, 10, 3, 4


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def setup():
  cfg = models.get_config("tiny-qwen2", vocab_size=V, max_len=L)
  student = models.init_model(cfg, seed=0)
  teacher = models.init_model(
      cfg.replace(d_model=48, num_heads=4, head_dim=12), seed=7
  )
  rng = np.random.RandomState(0)
  # Two packed segments in row 0; row 2 is shorter (padding at the end).
  seg = np.ones((B, L), np.int32)
  seg[0, 6:] = 2
  seg[2, 8:] = 0
  pos = np.tile(np.arange(L), (B, 1))
  pos[0, 6:] -= 6
  mb = {
      "tokens": jnp.asarray(rng.randint(1, V, (B, L)) * (seg > 0), jnp.int32),
      "positions": jnp.asarray(pos * (seg > 0), jnp.int32),
      "segment_ids": jnp.asarray(seg),
      "completion_mask": jnp.asarray(
          (np.arange(L) >= P) * (seg == 1), jnp.int32
      ),
  }
  z_s, z_t = (
      np.asarray(m(mb["tokens"], mb["positions"], mb["segment_ids"]))
      for m in (student, teacher)
  )
  return student, teacher, mb, z_s.astype(np.float64), z_t.astype(np.float64)


def _mask(mb, mode):
  seg = np.asarray(mb["segment_ids"])
  if mode == "attention":
    return (seg[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1])
  return np.asarray(mb["completion_mask"])[:, 1:] != 0


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("mask_mode", ["completion", "attention"])
def test_fkl_at_t_is_t2_kl_of_the_teacher_over_the_mask(
    setup, chunked, mask_mode
):
  student, teacher, mb, z_s, z_t = setup
  tau = 2.0
  hp = kd.DISTILL.hp(
      dict(temperature=tau, mask_mode=mask_mode, chunked=chunked, chunk_size=8)
  )
  norms = kd.DISTILL.normalizers(mb, hp)
  m = _mask(mb, mask_mode)
  assert float(norms["tokens"]) == m.sum()
  loss, metrics = kd.DISTILL.loss(student, {"teacher": teacher}, mb, norms, hp)
  lp, lq = _log_softmax(z_t / tau)[:, :-1], _log_softmax(z_s / tau)[:, :-1]
  kl = (np.exp(lp) * (lp - lq)).sum(-1)
  assert float(loss) == pytest.approx(tau**2 * kl[m].mean(), rel=1e-5)
  assert float(metrics["distill/num_tokens"]) == m.sum()


def test_jsd_beta_is_the_mixture_weight(setup):
  student, teacher, mb, z_s, z_t = setup
  hp = kd.DISTILL.hp(dict(divergence="jsd", beta=0.3, chunked=False))
  norms = kd.DISTILL.normalizers(mb, hp)
  loss, _ = kd.DISTILL.loss(student, {"teacher": teacher}, mb, norms, hp)
  p, q = np.exp(_log_softmax(z_t)[:, :-1]), np.exp(_log_softmax(z_s)[:, :-1])
  mix = 0.3 * p + 0.7 * q
  jsd = 0.3 * (p * np.log(p / mix)).sum(-1) + 0.7 * (q * np.log(q / mix)).sum(
      -1
  )
  m = _mask(mb, "completion")
  assert float(loss) == pytest.approx(jsd[m].mean(), rel=1e-4)


def test_defaults_bounds_and_the_cache_temperature():
  hp = methods.get("distill").hp(None)
  assert (hp.divergence, hp.temperature, hp.tau_sq) == ("fkl", 1.0, True)
  assert (hp.beta, hp.alpha, hp.topk, hp.topk_mode) == (
      0.5,
      0.1,
      0,
      "tail_bucket",
  )
  assert methods.get("distill_cache").hparams is kd.DistillHparams
  assert methods.get("distill_cache").data == "topk"
  assert methods.get("distill_cache").frozen == ()
  assert methods.get("distill").frozen == ("teacher",)
  for key, value, bound in [
      ("divergence", "kl", "one of ('fkl', 'rkl', 'jsd'"),
      ("temperature", 0.0, "> 0"),
      ("beta", 1.5, "in [0, 1]"),
      ("mask_mode", "all", "one of ('completion', 'attention')"),
      ("topk", -1, ">= 0"),
      ("topk_mode", "top1", "one of ('renormalized', 'tail_bucket'"),
  ]:
    with pytest.raises(methods.HparamError) as e:
      methods.get("distill_cache").hp({key: value})
    msg = str(e.value)
    assert f"loss.{key}={value!r}" in msg and "'distill_cache'" in msg, msg
    assert f"it must be {bound}" in msg, msg
  header = types.SimpleNamespace(temperature=2.0)
  assert hp.replace(temperature=2.0).for_cache(header).teacher_temperature == 2
  with pytest.raises(ValueError, match=r"recorded at 2.0.*topk_mode"):
    hp.for_cache(header)
  renorm = hp.replace(topk_mode="renormalized").for_cache(header)
  assert renorm.recorded_temperature() == 2.0 and renorm.temperature == 1.0
