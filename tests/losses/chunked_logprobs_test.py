"""Vocab-chunked token log-probs/entropies == float64 numpy and dense jax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import losses
from w2s_jax.losses import chunked_logprobs

N_B, N_L, D, V = 3, 7, 16, 50


def _inputs(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  h = jax.random.normal(k[0], (N_B, N_L, D))
  w = jax.random.normal(k[1], (D, V)) * 0.5
  y = jax.random.randint(k[2], (N_B, N_L), 0, 45)
  return h, w, y


def _np_stats(h, w, y, tau, width):
  z = (np.asarray(h, np.float64) @ np.asarray(w, np.float64))[..., :width]
  z = z / tau
  lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  lp = z - lse[..., None]
  tok = np.take_along_axis(lp, np.asarray(y)[..., None], -1)[..., 0]
  ent = -(np.exp(lp) * lp).sum(-1)
  return tok, ent


@pytest.mark.parametrize(
    "chunk", [4, 96, None]
)  # many padded chunks / one chunk / auto (losses.chunked.auto_chunk_size)
def test_values_match_float64(chunk):
  h, w, y = _inputs()
  lp, ent = chunked_logprobs.chunked_token_logprobs(
      h, w, y, temperature=0.7, vocab_size=45, entropy=True, chunk_size=chunk
  )
  want_lp, want_ent = _np_stats(h, w, y, 0.7, 45)
  np.testing.assert_allclose(lp, want_lp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-5)
  lp_only, none = chunked_logprobs.chunked_token_logprobs(
      h, w, y, temperature=0.7, vocab_size=45, chunk_size=chunk
  )
  assert none is None
  np.testing.assert_array_equal(lp_only, lp)


@pytest.mark.parametrize("layout", ["DV", "VD"])
def test_gradients_match_dense(layout):
  """Any downstream (non-linear) use of lp and H: same h and W gradients;
  'VD' takes a tied [V, D] embedding table as it is."""
  h, w, y = _inputs(1)
  if layout == "VD":
    w = w.T
  k = jax.random.split(jax.random.key(9), 2)
  a = jax.random.normal(k[0], (N_B, N_L))

  def downstream(lp, ent):  # a clipped-ratio-like non-linearity
    return jnp.sum(jnp.minimum(jnp.exp(lp) * a, 0.3 * a)) + jnp.sum(ent**2)

  def chunked(h, w):
    return downstream(
        *chunked_logprobs.chunked_token_logprobs(
            h,
            w,
            y,
            temperature=1.3,
            vocab_size=45,
            entropy=True,
            w_layout=layout,
            chunk_size=5,
        )
    )

  def dense(h, w):
    z = h @ (w if layout == "DV" else w.T)
    return downstream(
        losses.token_logprobs(z, y, temperature=1.3, vocab_size=45),
        losses.token_entropy(z, temperature=1.3, vocab_size=45),
    )

  vc, gc = jax.value_and_grad(chunked, argnums=(0, 1))(h, w)
  vd, gd = jax.value_and_grad(dense, argnums=(0, 1))(h, w)
  np.testing.assert_allclose(vc, vd, rtol=1e-5)
  for a_, b_ in zip(gc, gd):
    scale = float(jnp.max(jnp.abs(b_)))
    assert scale > 0
    np.testing.assert_allclose(a_, b_, rtol=1e-5, atol=1e-5 * scale)
  # The padded logit columns (45..49) get exactly zero gradient.
  pad = gc[1][:, 45:] if layout == "DV" else gc[1][45:]
  assert float(jnp.max(jnp.abs(pad))) == 0.0


def test_no_vocab_sized_intermediate_beyond_one_chunk():
  """The jaxpr never holds an [N, V] array (forward and backward)."""
  n_tok, v, chunk = 512, 1000, 16
  h = jnp.zeros((n_tok, 8))
  w = jnp.zeros((8, v))
  y = jnp.zeros((n_tok,), jnp.int32)

  def f(h, w):
    lp, ent = chunked_logprobs.chunked_token_logprobs(
        h, w, y, entropy=True, chunk_size=chunk
    )
    return jnp.sum(lp) + jnp.sum(ent)

  text = str(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(h, w))
  assert f"{n_tok},{v}" not in text.replace(" ", "")
  assert f"{chunk},{v}" in text.replace(" ", "")


def test_bad_shapes_are_clear_errors():
  h, w, y = _inputs()
  with pytest.raises(ValueError, match="targets_N has shape"):
    chunked_logprobs.chunked_token_logprobs(h, w, y[:, :-1])
  with pytest.raises(ValueError, match="w_DV has shape"):
    chunked_logprobs.chunked_token_logprobs(h, w.T, y)
  with pytest.raises(ValueError, match="chunk_size"):
    chunked_logprobs.chunked_token_logprobs(h, w, y, chunk_size=0)
