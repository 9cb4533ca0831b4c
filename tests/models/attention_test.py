"""Attention backends == the einsum reference, values and gradients."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from w2s_jax.models import attention

B, L, N, K, H = 2, 16, 4, 2, 16
# Max abs error bounds vs the reference (computed in the same dtype):
# fp32 agrees to rounding; bf16 differs by one rounding of the probabilities.
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _segments(kind, length=L):
  if kind == "causal":
    return None
  if kind == "left_padded":
    seg = np.ones((B, length), np.int32)
    seg[0, :5] = 0
    seg[1, :2] = 0
    return jnp.asarray(seg)
  seg = np.ones((B, length), np.int32)  # packed: 3 + 2 segments, right pad
  seg[0, length // 3 :] = 2
  seg[0, 2 * length // 3 :] = 3
  seg[1, length // 2 :] = 2
  seg[1, -3:] = 0
  return jnp.asarray(seg)


def _qkv(dtype, length=L):
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (B, length, N, H), dtype)
  k = jax.random.normal(ks[1], (B, length, K, H), dtype)
  v = jax.random.normal(ks[2], (B, length, K, H), dtype)
  w = jax.random.normal(ks[3], (B, length, N, H), jnp.float32)
  return q, k, v, w


def _reference(q, k, v, seg):
  mask = attention.causal_mask(seg, q.shape[1], q.shape[0])
  return attention.xla_attention(q, k, v, mask, "highest")


def _value_and_grads(fn, q, k, v, w, seg):
  """Output and d(loss)/d(q, k, v) for a loss over the valid rows only."""
  valid = jnp.ones(q.shape[:2]) if seg is None else (seg != 0)

  def loss(q, k, v):
    out = fn(q, k, v).astype(jnp.float32)
    return jnp.sum(out * w * valid[:, :, None, None])

  out = fn(q, k, v).astype(jnp.float32) * valid[:, :, None, None]
  return out, jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _assert_close(fn, dtype, kind, length=L):
  q, k, v, w = _qkv(dtype, length)
  seg = _segments(kind, length)
  ref = _value_and_grads(lambda *a: _reference(*a, seg), q, k, v, w, seg)
  got = _value_and_grads(fn(seg), q, k, v, w, seg)
  tol = TOL[dtype]
  out_err = float(jnp.max(jnp.abs(got[0] - ref[0])))
  assert out_err <= tol, (kind, dtype, out_err)
  for name, g, r in zip("qkv", got[1], ref[1]):
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    # Gradients sum over L terms: bound relative to their scale.
    err = np.max(np.abs(g - r)) / max(1.0, np.max(np.abs(r)))
    assert err <= tol, (kind, dtype, name, err)


KINDS = ["causal", "left_padded", "packed"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_jax_dot_product_attention_masks_match_reference(dtype, kind):
  # The cuDNN path builds exactly these masks; JAX's XLA lowering of them
  # runs on CPU.
  fn = lambda seg: (
      lambda q, k, v: attention.cudnn_attention(q, k, v, seg, "xla")
  )
  _assert_close(fn, dtype, kind)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_model_entry_point_on_cpu_is_the_reference(dtype, kind):
  fn = lambda seg: (
      lambda q, k, v: attention.attention(q, k, v, seg, "auto", "highest")
  )
  _assert_close(fn, dtype, kind)


@pytest.mark.parametrize(
    "dtype,kind",
    [
        (jnp.float32, "packed"),
        pytest.param(jnp.bfloat16, "left_padded", marks=pytest.mark.slow),
        pytest.param(jnp.float32, "causal", marks=pytest.mark.slow),
    ],
)
def test_pallas_flash_kernel_in_interpret_mode(dtype, kind):
  # 200 tokens pad to 2 blocks of 128: exercises block skipping and the
  # padding of a length the blocks do not divide. Interpret mode must be on
  # when the kernel (and its custom VJP) lowers, i.e. around the whole call.
  fn = lambda seg: (
      lambda q, k, v: attention.attention(
          q, k, v, seg, "pallas", interpret=True
      )
  )
  with pltpu.force_tpu_interpret_mode():
    _assert_close(fn, dtype, kind, length=200)


def test_backend_the_platform_lacks_is_a_config_error():
  with pytest.raises(ValueError, match=r"'cudnn'.*platform 'cpu'.*'xla'"):
    attention.check_backend("cudnn", "cpu")
  with pytest.raises(ValueError, match=r"'pallas'.*platform 'gpu'"):
    attention.check_backend("pallas", "gpu")
  with pytest.raises(ValueError, match="'flash'"):
    attention.check_backend("flash", "tpu")
  assert attention.check_backend("auto", "gpu") == "cudnn"
  assert attention.check_backend("auto", "tpu") == "pallas"
  assert attention.check_backend("auto", "cpu") == "xla"


def test_cudnn_falls_back_for_fp32_and_logs_once(monkeypatch, caplog):
  monkeypatch.setattr(attention, "check_backend", lambda b: "cudnn")
  monkeypatch.setattr(attention, "_logged", set())
  q, k, v, _ = _qkv(jnp.float32)
  seg = _segments("left_padded")
  with caplog.at_level(logging.WARNING, logger=attention.__name__):
    out1 = attention.attention(q, k, v, seg, "cudnn", "highest")
    attention.attention(q, k, v, seg, "cudnn", "highest")
  lines = [r for r in caplog.records if "cuDNN cannot take" in r.message]
  assert len(lines) == 1 and "float32" in lines[0].message
  ref = _reference(q, k, v, seg)
  valid = (seg != 0)[:, :, None, None]
  np.testing.assert_allclose(out1 * valid, ref * valid, atol=1e-6)
  assert attention._cudnn_ok(q.astype(jnp.bfloat16)) is None
