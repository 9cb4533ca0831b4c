"""Tests of w2s_jax.losses.chunked: equal to the dense path, teacher-free grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import losses
from w2s_jax.losses import chunked

NAMES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")


def _inputs(seed=0, b=3, length=5, d=8, e=6, v=40, v_t=None):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  h_s, w_s = f(b, length, d), f(d, v) * 0.7
  h_t, w_t = f(b, length, e), f(e, v_t or v) * 0.7
  mask = rng.random((b, length)) > 0.3
  mask[0, 0] = True
  targets = rng.integers(0, v, size=(b, length)).astype(np.int32)
  return h_s, w_s, h_t, w_t, mask, targets


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _check(f_chunk, f_dense, args, rtol=1e-5):
  """Same value and gradients w.r.t. every argument (teacher: exactly 0)."""
  argnums = tuple(range(len(args)))
  vc, gc = jax.value_and_grad(f_chunk, argnums=argnums)(*args)
  vd, gd = jax.value_and_grad(f_dense, argnums=argnums)(*args)
  np.testing.assert_allclose(float(vc), float(vd), rtol=rtol, atol=1e-7)
  for a, b in zip(gc, gd):
    assert _rel(a, b) <= rtol
  return gc


@pytest.mark.parametrize("name", NAMES)
def test_chunked_divergence_equals_dense(name):
  h_s, w_s, h_t, w_t, mask, _ = _inputs(seed=1)
  kw = dict(temperature=1.7, beta=0.3, alpha=0.2, agg="seq-mean-token-mean")
  dense = lambda hs, ws, ht, wt: losses.divergence(
      name, hs @ ws, ht @ wt, mask, **kw
  )[0]
  # 15 tokens in chunks of 4: the last chunk is padded.
  chunk = lambda hs, ws, ht, wt: losses.chunked_divergence(
      name, hs, ws, ht, wt, mask, chunk_size=4, dw_blocks=3, **kw
  )[0]
  g = _check(chunk, dense, (h_s, w_s, h_t, w_t))
  assert np.all(np.asarray(g[2]) == 0.0) and np.all(np.asarray(g[3]) == 0.0)


@pytest.mark.parametrize("agg", losses.AGG_MODES)
@pytest.mark.parametrize("dw_blocks", [1, 4])
def test_every_aggregation_mode_and_dw_blocking(agg, dw_blocks):
  h_s, w_s, h_t, w_t, mask, _ = _inputs(seed=2)
  norm = losses.normalizer(mask, agg) * 2.0  # an external normaliser
  kw = dict(agg=agg, normalizer=norm)
  dense = lambda hs, ws: losses.divergence(
      "fkl", hs @ ws, h_t @ w_t, mask, **kw
  )[0]
  chunk = lambda hs, ws: losses.chunked_divergence(
      "fkl", hs, ws, h_t, w_t, mask, chunk_size=6, dw_blocks=dw_blocks, **kw
  )[0]
  _check(chunk, dense, (h_s, w_s))


def test_cross_entropy_equals_dense_sft():
  h_s, w_s, _, _, mask, targets = _inputs(seed=3)
  dense = lambda hs, ws: losses.sft_cross_entropy(hs @ ws, targets, mask)
  chunk = lambda hs, ws: losses.chunked_cross_entropy(
      hs, ws, targets, mask, chunk_size=4
  )
  _check(lambda *a: chunk(*a)[0], lambda *a: dense(*a)[0], (h_s, w_s))
  mc, md = chunk(h_s, w_s)[1], dense(h_s, w_s)[1]
  for key in ("sft/accuracy", "sft/num_tokens", "sft/empty_mask"):
    np.testing.assert_allclose(float(mc[key]), float(md[key]), rtol=1e-6)


@pytest.mark.parametrize("mode", losses.TOPK_MODES)
def test_chunked_topk_equals_dense_topk(mode):
  h_s, w_s, h_t, w_t, mask, _ = _inputs(seed=4)
  lp_t = jax.nn.log_softmax(h_t @ w_t / 0.8, axis=-1)
  lps, ids = jax.lax.top_k(lp_t, 5)
  kw = dict(mode=mode, temperature=0.8, teacher_temperature=0.8)
  dense = lambda hs, ws: losses.topk_divergence(hs @ ws, ids, lps, mask, **kw)[
      0
  ]
  chunk = lambda hs, ws: losses.chunked_topk_divergence(
      hs, ws, ids, lps, mask, chunk_size=4, **kw
  )[0]
  _check(chunk, dense, (h_s, w_s))


def test_vocab_size_slices_padded_widths():
  h_s, w_s, h_t, w_t, mask, _ = _inputs(seed=5, v=40, v_t=44)
  dense = lambda hs, ws: losses.divergence(
      "rkl", hs @ ws, h_t @ w_t, mask, vocab_size=37
  )[0]
  chunk = lambda hs, ws: losses.chunked_divergence(
      "rkl", hs, ws, h_t, w_t, mask, vocab_size=37, chunk_size=4
  )[0]
  g = _check(chunk, dense, (h_s, w_s))
  assert np.all(np.asarray(g[1])[:, 37:] == 0.0)
  with pytest.raises(ValueError, match="pass vocab_size"):
    losses.chunked_divergence("rkl", h_s, w_s, h_t, w_t, mask)


def test_backward_recomputes_nothing():
  """The gradient program holds one scan (the forward) and no extra matmul."""
  h_s, w_s, h_t, w_t, mask, _ = _inputs(seed=6)

  def f(hs, ws):
    return losses.chunked_divergence(
        "jsd", hs, ws, h_t, w_t, mask, chunk_size=4, dw_blocks=1
    )[0]

  def count(jaxpr, prim):
    n = 0
    for eqn in jaxpr.eqns:
      n += eqn.primitive.name == prim
      for sub in jax.core.jaxprs_in_params(eqn.params):
        n += count(sub, prim)
    return n

  fwd = jax.make_jaxpr(f)(h_s, w_s).jaxpr
  grad = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(h_s, w_s).jaxpr
  assert count(fwd, "scan") == 1 and count(grad, "scan") == 1
  # Forward: student + teacher logits. Gradient pass: those plus dh and dW,
  # all inside the one scan.
  assert count(fwd, "dot_general") == 2
  assert count(grad, "dot_general") == 4


def test_masked_tokens_and_empty_mask():
  h_s, w_s, h_t, w_t, mask, _ = _inputs(seed=7)
  f = lambda hs, ht, m: losses.chunked_divergence(
      "fkl", hs, w_s, ht, w_t, m, chunk_size=4
  )
  (v, _), g = jax.value_and_grad(f, has_aux=True)(h_s, h_t, mask)
  h_s2, h_t2 = h_s.copy(), h_t.copy()
  h_s2[~mask], h_t2[~mask] = np.nan, 1e30
  (v2, _), g2 = jax.value_and_grad(f, has_aux=True)(h_s2, h_t2, mask)
  assert float(v2) == float(v)
  np.testing.assert_array_equal(np.asarray(g2), np.asarray(g))
  empty = np.zeros_like(mask)
  (v0, m0), g0 = jax.value_and_grad(f, has_aux=True)(h_s, h_t, empty)
  assert float(v0) == 0.0 and float(m0["distill/empty_mask"]) == 1.0
  assert np.all(np.asarray(g0) == 0.0)


def test_jit_and_bfloat16_inputs():
  h_s, w_s, h_t, w_t, mask, _ = _inputs(seed=8)
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)

  @jax.jit
  def f(hs, ws):
    return losses.chunked_divergence(
        "fkl", hs, ws, bf(h_t), bf(w_t), mask, chunk_size=8
    )[0]

  v, (gh, gw) = jax.value_and_grad(f, argnums=(0, 1))(bf(h_s), bf(w_s))
  assert v.dtype == jnp.float32
  assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
  up = lambda x: np.asarray(bf(x).astype(jnp.float32))
  ref = losses.divergence("fkl", up(h_s) @ up(w_s), up(h_t) @ up(w_t), mask)[0]
  np.testing.assert_allclose(float(v), float(ref), rtol=1e-5)


def test_block_layout_factorises_vocab():
  for v, blocks in [(151936, 8), (152064, 16), (40, 3), (37, 8), (11, 64)]:
    p, q, r = chunked._block_layout(v, blocks)
    assert p * q * r == v and 1 <= q <= blocks


def test_bad_inputs_raise_clear_errors():
  h_s, w_s, h_t, w_t, mask, targets = _inputs(seed=9)
  with pytest.raises(ValueError, match="chunk_size must be a positive int"):
    losses.chunked_divergence("fkl", h_s, w_s, h_t, w_t, mask, chunk_size=0)
  with pytest.raises(ValueError, match=r"w_s_DV has shape \(6, 40\)"):
    losses.chunked_divergence("fkl", h_s, w_s[:6], h_t, w_t, mask)
  with pytest.raises(ValueError, match="h_t_NE leading shape"):
    losses.chunked_divergence("fkl", h_s, w_s, h_t[:2], w_t, mask)
  with pytest.raises(ValueError, match=r"mask has shape \(3, 4\)"):
    losses.chunked_divergence("fkl", h_s, w_s, h_t, w_t, mask[:, :4])
  with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
    losses.chunked_divergence("jsd", h_s, w_s, h_t, w_t, mask, beta=2.0)
  with pytest.raises(ValueError, match="targets_N has shape"):
    losses.chunked_cross_entropy(h_s, w_s, targets[:, :2], mask)


def test_auto_chunk_size_bounds_memory_by_vocab_and_width():
  # The distill shape: N = 4 x 1024, V = 151,936, student D = 896.
  c = chunked.auto_chunk_size(4096, 151_936, 896)
  assert c == 832 and c % 64 == 0
  assert 4 * c * 151_936 <= 4 * 896 * 151_936  # per-step buffers <= 4 dW
  assert c * 151_936 * 4 <= 2**29  # one fp32 [C, V] buffer <= 512 MiB
  assert chunked.auto_chunk_size(2048, 151_936, 512) == 512  # D binds
  assert chunked.auto_chunk_size(1024, 151_936, 896) == 512  # half binds
  assert chunked.auto_chunk_size(256, 32_000, 4096) == 128  # half the tokens
  assert chunked.auto_chunk_size(40, 256, 64) == 64  # tiny: one chunk
