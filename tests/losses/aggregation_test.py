"""Tests of w2s_jax.losses.aggregation: modes, normalisers, micro-batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import losses
from w2s_jax.losses import aggregation


def _ref_aggregate(loss, mask, mode, max_len=None):
  """float64 reference, written from the docs/methods.md, "Aggregation" table."""
  loss = np.asarray(loss, np.float64)
  m = np.asarray(mask, np.float64)
  rows = m.sum(-1) > 0
  if mode == "token-mean":
    return (loss * m).sum() / max(m.sum(), 1)
  per_seq_sum = (loss * m).sum(-1)
  n = max(rows.sum(), 1)
  if mode == "seq-mean-token-mean":
    return (per_seq_sum[rows] / m.sum(-1)[rows]).sum() / n
  if mode == "seq-mean-token-sum":
    return per_seq_sum.sum() / n
  lmax = m.shape[-1] if max_len is None else max_len
  return per_seq_sum.sum() / (n * lmax)


def _random(seed=0, b=6, length=7):
  rng = np.random.default_rng(seed)
  loss = rng.normal(size=(b, length)).astype(np.float32)
  mask = rng.random((b, length)) > 0.4
  mask[0] = False  # an empty (padding) row
  mask[1, :] = True
  return loss, mask


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_modes_match_reference(mode):
  loss, mask = _random()
  got = aggregation.aggregate(loss, mask, mode)
  np.testing.assert_allclose(
      float(got), _ref_aggregate(loss, mask, mode), rtol=1e-6
  )
  if mode == "seq-mean-token-sum-norm":
    got = aggregation.aggregate(loss, mask, mode, max_len=50)
    np.testing.assert_allclose(
        float(got), _ref_aggregate(loss, mask, mode, 50), rtol=1e-6
    )


def test_normalizer_values():
  _, mask = _random()
  n_tok, n_seq = mask.sum(), (mask.sum(-1) > 0).sum()
  norm = aggregation.normalizer
  assert float(norm(mask, "token-mean")) == n_tok
  assert float(norm(mask, "seq-mean-token-mean")) == n_seq
  assert float(norm(mask, "seq-mean-token-sum")) == n_seq
  assert float(norm(mask, "seq-mean-token-sum-norm")) == n_seq * 7
  assert float(norm(mask, "seq-mean-token-sum-norm", max_len=3000)) == (
      n_seq * 3000
  )


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_padding_rows_and_masked_garbage_are_neutral(mode):
  loss, mask = _random(seed=1)
  base = aggregation.aggregate(loss, mask, mode)
  garbage = np.where(mask, loss, np.nan).astype(np.float32)
  extra_loss = np.concatenate([garbage, np.full((2, 7), np.inf, np.float32)])
  extra_mask = np.concatenate([mask, np.zeros((2, 7), bool)])
  got = aggregation.aggregate(extra_loss, extra_mask, mode)
  np.testing.assert_allclose(float(got), float(base), rtol=1e-6)


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_empty_mask_is_exactly_zero(mode):
  loss, _ = _random(seed=2)
  mask = np.zeros_like(loss, bool)
  v, g = jax.value_and_grad(lambda x: aggregation.aggregate(x, mask, mode))(
      jnp.asarray(loss)
  )
  assert float(v) == 0.0 and np.all(np.asarray(g) == 0.0)
  # A zero external normaliser (an empty step) is also a clean zero.
  assert float(aggregation.aggregate(loss, mask, mode, normalizer=0.0)) == 0.0


def _linear_model_inputs(seed, b=7, length=6, d=5, v=11):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(b, length, d)).astype(np.float32)
  w = rng.normal(size=(d, v)).astype(np.float32) * 0.5
  t_logits = rng.normal(size=(b, length, v)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, length))
  mask = np.zeros((b, length), bool)
  lens = [6, 2, 0, 5, 1, 3, 4]  # uneven, one padding row
  starts = [0, 3, 0, 1, 2, 0, 1]
  for i, (s, n) in enumerate(zip(starts, lens)):
    mask[i, s : s + n] = True
  return h, w, t_logits, targets, mask


@pytest.mark.parametrize("mode", losses.AGG_MODES)
@pytest.mark.parametrize("kind", ["jsd", "sft"])
def test_micro_batches_with_global_normalizer_equal_full_batch(mode, kind):
  """1 vs 4 uneven micro-batches (each trimmed to its own padded length)."""
  h, w, t_logits, targets, mask = _linear_model_inputs(seed=3)
  l_max = mask.shape[1]
  norm = aggregation.normalizer(mask, mode, max_len=l_max)

  @jax.jit
  @jax.value_and_grad
  def loss_fn(w, hs, other, m, normalizer):
    logits = jnp.einsum("bld,dv->blv", hs, w)
    kw = dict(agg=mode, normalizer=normalizer, max_len=l_max)
    if kind == "sft":
      return losses.sft_cross_entropy(logits, other, m, **kw)[0]
    return losses.jsd(logits, other, m, beta=0.3, **kw)[0]

  other = targets if kind == "sft" else t_logits
  full_v, full_g = loss_fn(w, h, other, mask, None)
  splits = [[0], [1, 2, 3], [4, 5], [6]]
  total_v, total_g = 0.0, np.zeros_like(w, np.float64)
  for rows in splits:
    # Trim trailing all-masked columns: micro-batches pad to different L.
    last = max(np.nonzero(mask[rows].any(0))[0].max() + 1, 1)
    sub = lambda x, rows=rows, last=last: x[rows][:, :last]
    v, g = loss_fn(w, sub(h), sub(other), sub(mask), norm)
    total_v += float(v)
    total_g += np.asarray(g, np.float64)
  np.testing.assert_allclose(total_v, float(full_v), rtol=2e-6)
  np.testing.assert_allclose(total_g, np.asarray(full_g), rtol=2e-5, atol=1e-7)


def test_token_weights_sum_to_one_for_mean_modes():
  _, mask = _random(seed=4)
  for mode in ("token-mean", "seq-mean-token-mean"):
    w = aggregation.token_weights(mask, mode)
    np.testing.assert_allclose(float(jnp.sum(w)), 1.0, rtol=1e-6)
    assert np.all(np.asarray(w)[~mask] == 0.0)


def test_bad_inputs_raise_clear_errors():
  loss, mask = _random(seed=5)
  with pytest.raises(ValueError, match="agg must be one of"):
    aggregation.aggregate(loss, mask, "mean")
  with pytest.raises(ValueError, match="needs a \\[..., L\\] mask"):
    aggregation.aggregate(loss[0], mask[0], "seq-mean-token-mean")
  with pytest.raises(ValueError, match=r"mask has shape \(6, 6\)"):
    aggregation.aggregate(loss, mask[:, :6])
