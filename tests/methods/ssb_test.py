"""SSB (w2s_jax/methods/ssb.py): the loss is λ_KD·T²·FKL at T + λ_CE·CE on the
reply rows, against an independent float64 reference; its hyperparameters."""

import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import methods, models
from w2s_jax.methods import ssb

V, L, B, P = 24, 10, 3, 4  # P prompt tokens; the reply is the rest


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _setup(seed=0):
  cfg = models.get_config("tiny-qwen2", vocab_size=V, max_len=L)
  model = models.init_model(cfg, seed=seed)
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, V, (B, L)).astype(np.int32)
  mb = {
      "tokens": jnp.asarray(tokens),
      "positions": jnp.asarray(np.tile(np.arange(L), (B, 1)), jnp.int32),
      "segment_ids": jnp.ones((B, L), jnp.int32),
      "completion_mask": jnp.asarray(
          np.tile(np.arange(L) >= P, (B, 1)), jnp.int32
      ),
  }
  logits = np.asarray(model(mb["tokens"]), np.float64)
  return model, mb, tokens, logits


def _with_cache(mb, lp_t):
  """Cache with k = V from teacher log-probs [B, L, V]; garbage off M."""
  ids = np.argsort(-lp_t, axis=-1).astype(np.int32)
  lps = np.take_along_axis(lp_t, ids, -1).astype(np.float32)
  lps[:, : P - 1] = -np.inf  # prompt rows: never read
  return {
      **mb,
      "teacher_topk_ids": jnp.asarray(ids),
      "teacher_topk_logprobs": jnp.asarray(lps),
  }


def _loss(model, mb, **cfg):
  base = {"temperature": 2.0, "teacher_temperature": 2.0, "chunk_size": 8}
  hp = ssb.SSB.hp({**base, **cfg})
  norms = ssb.SSB.normalizers(mb, hp)
  return ssb.SSB.loss(model, {}, mb, norms, hp)


@pytest.mark.parametrize("lambda_ce", [0.0, 0.3])
def test_ssb_loss_is_t2_fkl_at_t_plus_ce(lambda_ce):
  model, mb, tokens, zs = _setup()
  tau = 2.0
  zt = np.random.RandomState(1).randn(B, L, V) * 3
  lp_t = _log_softmax(zt / tau)
  loss, metrics = _loss(
      model,
      _with_cache(mb, lp_t),
      topk_mode="renormalized",
      lambda_ce=lambda_ce,
  )
  # Reference in float64: rows P-1 .. L-2 predict the reply tokens P .. L-1.
  lq = _log_softmax(zs / tau)
  rows = slice(P - 1, L - 1)
  kl = (np.exp(lp_t) * (lp_t - lq)).sum(-1)[:, rows]
  ce = -np.take_along_axis(_log_softmax(zs)[:, :-1], tokens[:, 1:, None], -1)[
      ..., 0
  ][:, rows]
  want = tau**2 * kl.mean() + lambda_ce * ce.mean()
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics["ssb/fkl"]) == pytest.approx(kl.mean(), rel=1e-5)
  assert float(metrics["ssb/num_tokens"]) == B * (L - P)


@pytest.mark.parametrize("mode", ["renormalized", "tail_bucket"])
def test_ssb_loss_is_zero_when_teacher_matches_student_on_m(mode):
  model, mb, _, zs = _setup()
  lp_t = _log_softmax(zs / 2.0)
  loss, _ = _loss(model, _with_cache(mb, lp_t), topk_mode=mode)
  assert abs(float(loss)) < 1e-5
  # A different teacher gives a clearly positive loss.
  other, _ = _loss(
      model, _with_cache(mb, _log_softmax(zs[::-1] / 2.0)), topk_mode=mode
  )
  assert float(other) > 1e-2


def test_defaults_are_the_papers_and_bounds_name_the_key():
  hp = methods.get("ssb").hp(None)
  assert (hp.temperature, hp.lambda_kd, hp.lambda_ce) == (2.0, 1.0, 0.0)
  assert (hp.divergence, hp.topk_mode, hp.tau_sq) == (
      "fkl",
      "tail_bucket",
      True,
  )
  for key, value, bound in [
      ("lambda_kd", -1.0, ">= 0"),
      ("lambda_ce", -0.5, ">= 0"),
      ("mask_mode", "attention", "'completion'"),
      ("temperature", 0.0, "> 0"),
  ]:
    with pytest.raises(methods.HparamError) as e:
      methods.get("ssb").hp({key: value})
    msg = str(e.value)
    assert f"loss.{key}={value!r}" in msg and "'ssb'" in msg, msg
    assert bound in msg, msg
