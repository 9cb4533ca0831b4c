"""Vocab-chunked per-token log-probs and entropies from hidden states.

RL scoring needs, per sampled token, log π(y_t) (the policy, the reference,
the teacher) and for some methods the entropy H_t of π(·|y_<t). The dense
path forms [B, L, V] fp32 logits of each model for that: at V 151,936 that is
gigabytes per scoring call. Here the caller passes final hidden states h
[N, D] and the unembedding W [D, V]; a `lax.scan` walks over token chunks of
size C, forms the [C, V] logits of one chunk, and keeps only

  lp_n = log softmax(z_n/τ)[y_n],     H_n = −Σ_v p_nv log p_nv,  p = softmax(z/τ)

so the largest array is one [C, V] chunk. Unlike the losses of
`losses.chunked` (a weighted sum whose gradient can be formed in the forward
pass), these functions return per-token arrays that enter non-linear losses
(the clipped ratio), so the incoming cotangents ct_lp, ct_H [N] are known only
in the backward pass. A `jax.custom_vjp` therefore keeps h, W and the targets
as residuals and recomputes each chunk's logits in the backward scan:

  g_n = ct_lp_n·∂lp_n/∂z_n + ct_H_n·∂H_n/∂z_n         ([C, V], one chunk)
  dh_n = g_n·Wᵀ,   dW += h_Cᵀ·g_C

(one extra [C, D]x[D, V] matmul per chunk, never a [N, V] buffer). Chunks are
strided as in `losses.chunked` (chunk j holds tokens j, j+n, j+2n, ...), so a
batch sharded over the 'data' axis keeps every chunk spread over all shards.

Shape legend: N tokens (any leading shape [..., D]), D model width, V vocab,
C chunk size, n chunks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from w2s_jax.losses import aggregation, divergences
from w2s_jax.losses.chunked import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DW_BLOCKS,
    _accumulate_dw,
    _to_chunks,
    auto_chunk_size,
)

# Contractions of h [C, D] with W in either layout: [D, V] (an lm head) or
# [V, D] (a tied embedding table, used as it is: no transposed copy of it).
_LOGITS = {"DV": "cd,dv->cv", "VD": "cd,vd->cv"}
_DH = {"DV": "cv,dv->cd", "VD": "cv,vd->cd"}


def _from_chunks(x_nC: jax.Array, n_tokens: int) -> jax.Array:
  """Inverse of `_to_chunks` for [n, C] values, padding dropped."""
  return jnp.swapaxes(x_nC, 0, 1).reshape(-1)[:n_tokens]


def _token_stats(z_CV, y_C, tau: float, entropy: bool):
  """(lp_C, H_C) of one chunk's fp32 logits (H_C = None without entropy)."""
  lp = divergences.log_softmax_f32(z_CV, tau)
  tok = jnp.take_along_axis(lp, y_C[:, None], axis=-1)[:, 0]
  if not entropy:
    return (tok,)
  p = jnp.exp(lp)
  ent = -jnp.sum(jnp.where(p > 0, p * lp, 0.0), axis=-1)
  return tok, ent


def _make(width: int, tau: float, entropy: bool, dw_blocks: int, layout: str):
  """custom_vjp of (h [n, C, D], W [D, V] or [V, D], y [n, C]) -> (lp[, H])
  [n, C]."""

  def chunk_fn(h_CD, w_DV, y_C):
    z = jnp.einsum(
        _LOGITS[layout], h_CD, w_DV, preferred_element_type=jnp.float32
    )
    return _token_stats(z[:, :width], y_C, tau, entropy)

  @jax.custom_vjp
  def stats(h_nCD, w_DV, y_nC):
    def body(_, xs):
      return None, chunk_fn(xs[0], w_DV, xs[1])

    return jax.lax.scan(body, None, (h_nCD, y_nC))[1]

  def fwd(h_nCD, w_DV, y_nC):
    return stats(h_nCD, w_DV, y_nC), (h_nCD, w_DV, y_nC)

  def bwd(res, cts):
    h_nCD, w_DV, y_nC = res

    def body(dw, xs):
      h_C, y_C, ct_C = xs
      # Recompute the chunk's logits: W·h and the vjp through the softmax
      # statistics, with the cotangent restricted to the first `width`
      # columns (padded logit columns get zero gradient, dW keeps W's shape).
      z = jnp.einsum(
          _LOGITS[layout], h_C, w_DV, preferred_element_type=jnp.float32
      )
      _, vjp_fn = jax.vjp(
          lambda z: _token_stats(z[:, :width], y_C, tau, entropy), z
      )
      (g_CV,) = vjp_fn(ct_C)
      dh_C = jnp.einsum(
          _DH[layout],
          g_CV.astype(w_DV.dtype),
          w_DV,
          preferred_element_type=jnp.float32,
      ).astype(h_C.dtype)
      dw = _accumulate_dw(dw, h_C, g_CV.astype(h_C.dtype), dw_blocks, layout)
      return dw, dh_C

    cts = tuple(jnp.asarray(c, jnp.float32) for c in cts)
    dw, dh = jax.lax.scan(
        body, jnp.zeros(w_DV.shape, jnp.float32), (h_nCD, y_nC, cts)
    )
    return dh, dw.astype(w_DV.dtype), None

  stats.defvjp(fwd, bwd)
  return stats


def chunked_token_logprobs(
    h_ND: jax.Array,
    w_DV: jax.Array,
    targets_N: jax.Array,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    entropy: bool = False,
    w_layout: str = "DV",
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    dw_blocks: int = DEFAULT_DW_BLOCKS,
) -> tuple[jax.Array, jax.Array | None]:
  """log softmax(h·W/τ)[target] (and the entropy) per token, vocab-chunked.

  Equals `sequence.token_logprobs(h @ W, targets)` (and
  `sequence.token_entropy(h @ W)`) in value and gradient, without a [N, V]
  array in the forward or the backward pass.

  Args:
    h_ND: [..., D] final hidden states (already shifted: row t predicts
      targets[t]).
    w_DV: [D, V] unembedding, or with ``w_layout='VD'`` a [V, D] tied
      embedding table as it is stored (no transposed copy is formed).
    targets_N: [...] int target ids (< vocab_size).
    temperature: τ > 0.
    vocab_size: slice padded logit widths to the tokenizer vocabulary.
    entropy: also return the per-token entropy of softmax(z/τ).
    w_layout: 'DV' or 'VD', the layout of ``w_DV``.
    chunk_size: most tokens per scan step (memory ∝ chunk_size·V); None:
      `chunked.auto_chunk_size` of N, V and D.
    dw_blocks: vocab blocks of the in-place dW accumulation (see
      `losses.chunked`).

  Returns:
    (lp [...] f32, H [...] f32 or None).
  """
  tau = aggregation.check_temperature(temperature)
  if chunk_size is not None and (
      not isinstance(chunk_size, int) or chunk_size < 1
  ):
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}.")
  lead = tuple(jnp.shape(h_ND)[:-1])
  if tuple(jnp.shape(targets_N)) != lead:
    raise ValueError(
        f"targets_N has shape {tuple(jnp.shape(targets_N))}; expected {lead}"
        " (h_ND.shape[:-1]): shift first (h[:, :-1], tokens[:, 1:])."
    )
  if w_layout not in _LOGITS:
    raise ValueError(f"w_layout must be 'DV' or 'VD'; got {w_layout!r}.")
  d_axis = 0 if w_layout == "DV" else 1
  if w_DV.ndim != 2 or w_DV.shape[d_axis] != h_ND.shape[-1]:
    want = "(D={0}, V)" if w_layout == "DV" else "(V, D={0})"
    raise ValueError(
        f"w_DV has shape {tuple(w_DV.shape)}; expected"
        f" {want.format(h_ND.shape[-1])} (w_layout={w_layout!r})."
    )
  v = w_DV.shape[1 - d_axis]
  divergences.slice_vocab(jnp.zeros((v,)), vocab_size, v, "w_DV")
  width = v if vocab_size is None else int(vocab_size)
  h = h_ND.reshape(-1, h_ND.shape[-1])
  y = jnp.asarray(targets_N, jnp.int32).reshape(-1)
  n_tok = h.shape[0]
  n = max(n_tok, 1)
  if chunk_size is None:
    chunk_size = auto_chunk_size(n, v, h_ND.shape[-1])
  n_chunks = math.ceil(n / chunk_size)
  chunk = math.ceil(n / n_chunks)
  pad = n_chunks * chunk - n_tok

  def prep(x):
    if pad:
      x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return _to_chunks(x, n_chunks, chunk)

  out = _make(width, tau, entropy, dw_blocks, w_layout)(prep(h), w_DV, prep(y))
  out = [_from_chunks(x, n_tok).reshape(lead) for x in out]
  return out[0], (out[1] if entropy else None)
