"""Vocab-chunked losses from hidden states: no [N, V] logits of two models.

At V ≈ 152k the dense path materialises fp32 logits, log-probs and their
gradients for every token of both models: gigabytes per micro-batch. Here the
caller passes hidden states and unembedding matrices instead:

  student h_s [N, D] and W_s [D, V]; teacher h_t [N, E] and W_t [E, V], or a
  teacher top-k cache (ids, log-probs) [N, K]; plain cross-entropy needs only
  the student and the targets.

A `lax.scan` walks over token chunks of size C. Each step forms the [C, V]
logits, evaluates the per-token loss ℓ, and, when differentiating, its
gradient g = ∂(Σ w·ℓ)/∂z [C, V] with `jax.vjp` on the chunk; it then emits
dh = g·W_sᵀ and accumulates dW_s += h_Cᵀ·g. A `jax.custom_vjp` returns those
as the residuals, so the backward pass only scales them by the incoming
cotangent: it recomputes nothing, and the peak extra memory is a few [C, V]
buffers plus dW_s. The teacher inputs get exactly zero cotangents. Without
differentiation a forward-only scan runs.

Per-token weights w come from `aggregation.token_weights`, so every
aggregation mode and the step-global normaliser work as in the dense path,
with the same per-token functions (values and gradients match the dense path
up to summation order).

Chunks are strided: chunk j holds tokens {j, j + n, j + 2n, ...} (n chunks).
With tokens sharded contiguously over a 'data' mesh axis every chunk then
spans all data shards, so the scan stays parallel under GSPMD; a vocab-sharded
W ('tensor' axis) shards the [C, V] logits and their reductions.

Shape legend: N tokens (any leading shape [..., D]; sequence aggregation
modes need [B, L, D]), D student width, E teacher width, V vocab, K cached
entries, C chunk size.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from w2s_jax.losses import aggregation, divergences, topk

DEFAULT_CHUNK_SIZE = None  # chosen per call by `auto_chunk_size`
DEFAULT_DW_BLOCKS = 8

# token_fn(z_CV, chunk_tree, shared_tree) -> (loss_C, aux dict of [C] values).
TokenFn = Callable[
    [jax.Array, Any, Any], tuple[jax.Array, dict[str, jax.Array]]
]


def auto_chunk_size(n_tokens: int, vocab: int, d_model: int) -> int:
  """Tokens per scan step when the caller sets none.

  Each step holds about four fp32 [C, V] buffers (logits of both models,
  log-probs, the logit gradient) next to the fp32 dW_s [D, V] that the scan
  accumulates anyway. C is the largest multiple of 64 with (a) those
  buffers no larger than four times dW_s (C <= D), (b) one [C, V] buffer
  within 512 MiB, and (c) at most half the tokens, so the chunked path
  never holds as much as the dense one. Larger chunks mean fewer scan steps
  and fewer re-reads of W: on XLA:CPU at N = 1024, D = 896, V = 151,936, two
  chunks of 512 ran 1.25x faster than three of 342 or four of 256 (temp
  memory 0.51x dense instead of 0.34x). At least 64 (small models and
  batches then run one or few chunks).
  """
  by_width = d_model
  by_bytes = 2**29 // (4 * max(vocab, 1))
  c = max(64, min(by_width, by_bytes) // 64 * 64)
  half = -(-n_tokens // 2)
  return min(c, max(64, -(-half // 64) * 64))


def _to_chunks(x: jax.Array, n_chunks: int, chunk: int) -> jax.Array:
  """[n·C, ...] -> [n, C, ...] with chunk j = tokens j, j+n, j+2n, ..."""
  return jnp.swapaxes(x.reshape((chunk, n_chunks) + x.shape[1:]), 0, 1)


def chunk_logits(h_CD: jax.Array, w_DV: jax.Array, m_C: jax.Array):
  """fp32 [C, V] logits of one chunk; rows of masked tokens are 0.

  The select also keeps the matmul apart from the softmax's row max: on
  XLA:CPU the two would otherwise be fused, and a row reduction over all V
  columns makes the fused kernel stream the whole of W for every small tile
  of rows (1.7x slower at V = 151,936, profiled). Masked rows hold
  nothing that counts (zero weight, zero cotangent).
  """
  z = jnp.einsum("cd,dv->cv", h_CD, w_DV, preferred_element_type=jnp.float32)
  return jnp.where(m_C[:, None], z, 0.0)


def _logits(h_CD, w_DV, m_C, width: int) -> jax.Array:
  return chunk_logits(h_CD, w_DV, m_C)[:, :width]


def _block_layout(v: int, dw_blocks: int) -> tuple[int, int, int]:
  """Factors V = P·Q·R: Q blocks, each P contiguous runs of R columns.

  Block q holds columns {p·Q·R + q·R + r}. A vocab axis sharded over up to P
  devices (P the largest power of two ≤ 64 dividing V/Q) keeps every block
  local to its shards, and runs of R columns keep memory access contiguous.
  """
  q = max(1, min(dw_blocks, v))
  while v % q:
    q -= 1
  p = math.gcd(v // q, 64)
  return p, q, v // (p * q)


def _accumulate_dw(dw, h_CD, g_CV, dw_blocks, layout="DV"):
  """dW += h_Cᵀ·g in Q vocab blocks, updated in place.

  ``dw`` is [D, V] (``layout='DV'``, an lm head) or [V, D] (``'VD'``, a tied
  embedding table kept as stored). XLA:CPU does not fuse the accumulation
  into the matmul, so one update would allocate a whole [D, V] temporary (the
  size of W_s); blocks bound it by [D, V/Q]. dw_blocks=1 is the single fused
  update of accelerator backends. The operand contracted over its major axis
  is transposed into a copy first (h_C for 'DV', the g block for 'VD'; see
  `models.dense`): XLA:CPU then runs its fast row-major GEMM kernel.
  """
  vd = layout == "VD"
  v, d = dw.shape if vd else dw.shape[::-1]
  if dw_blocks <= 1:
    eq = "cv,cd->vd" if vd else "cv,cd->dv"
    return dw + jnp.einsum(eq, g_CV, h_CD, preferred_element_type=jnp.float32)
  p, q, r = _block_layout(v, dw_blocks)
  g_CPQR = g_CV.reshape(g_CV.shape[0], p, q, r)
  axis = 1 if vd else 2  # the block axis Q of dw as [P, Q, R, D] / [D, P, Q, R]
  h_DC = jax.lax.optimization_barrier(h_CD.T)

  def update(j, dw_blocked):
    g_blk = jax.lax.dynamic_index_in_dim(g_CPQR, j, axis=2, keepdims=False)
    if vd:
      g_PRC = jax.lax.optimization_barrier(jnp.transpose(g_blk, (1, 2, 0)))
      upd = jnp.einsum(
          "prc,cd->prd", g_PRC, h_CD, preferred_element_type=jnp.float32
      )
    else:
      upd = jnp.einsum(
          "dc,cpr->dpr", h_DC, g_blk, preferred_element_type=jnp.float32
      )
    cur = jax.lax.dynamic_index_in_dim(dw_blocked, j, axis=axis, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(
        dw_blocked, cur + upd, j, axis=axis
    )

  blocked = dw.reshape((p, q, r, d) if vd else (d, p, q, r))
  return jax.lax.fori_loop(0, q, update, blocked).reshape(dw.shape)


def _scan(token_fn, width, h, w, chunks, shared, weights, mask, grads, blocks):
  """The chunk loop: (Σ w·ℓ, aux sums, dh [n, C, D] or None, dW or None)."""

  def body(carry, xs):
    total, aux_sums, dw = carry
    h_C, c_C, w_C, m_C = xs
    z = chunk_logits(h_C, w, m_C)
    # Differentiate w.r.t. the full-width logits: columns beyond `width`
    # (padding of the logit width) get a zero gradient, so dW keeps W's shape.
    f = lambda z: token_fn(z[:, :width], c_C, shared)
    if grads:
      loss_C, vjp_fn, aux = jax.vjp(f, z, has_aux=True)
      (g_CV,) = vjp_fn(jnp.where(m_C, w_C, 0.0))
      dh_C = jnp.einsum(
          "cv,dv->cd",
          g_CV.astype(w.dtype),
          w,
          preferred_element_type=jnp.float32,
      ).astype(h.dtype)
      dw = _accumulate_dw(dw, h_C, g_CV.astype(h.dtype), blocks)
    else:
      (loss_C, aux), dh_C = f(z), None
    total = total + jnp.sum(jnp.where(m_C, loss_C, 0.0) * w_C)
    aux_sums = {
        k: aux_sums[k] + jnp.sum(jnp.where(m_C, v, 0.0)) for k, v in aux.items()
    }
    return (total, aux_sums, dw), dh_C

  # Trace one chunk abstractly to learn the aux keys for the carry.
  first = jax.tree.map(lambda x: x[0], chunks)
  aux_keys = jax.eval_shape(
      lambda: token_fn(_logits(h[0], w, mask[0], width), first, shared)
  )[1]
  init = (
      jnp.zeros((), jnp.float32),
      {k: jnp.zeros((), jnp.float32) for k in aux_keys},
      jnp.zeros(w.shape, jnp.float32) if grads else None,
  )
  (total, aux_sums, dw), dh = jax.lax.scan(
      body, init, (h, chunks, weights, mask)
  )
  return total, aux_sums, dh, dw


def _make_chunked_sum(token_fn: TokenFn, width: int, dw_blocks: int):
  """custom_vjp of (h, W, chunks, shared, weights, mask) -> (Σ w·ℓ, aux)."""

  @jax.custom_vjp
  def chunked_sum(*args):
    total, aux, _, _ = _scan(token_fn, width, *args, False, dw_blocks)
    return total, aux

  def fwd(*args):
    total, aux, dh, dw = _scan(token_fn, width, *args, True, dw_blocks)
    # Residuals in the parameters' dtypes (dW accumulates in fp32).
    return (total, aux), (dh, dw.astype(args[1].dtype))

  def bwd(res, cts):
    dh, dw = res
    ct = cts[0]
    # Teacher inputs, weights and mask get exactly zero cotangents (None).
    return ((ct * dh).astype(dh.dtype), (ct * dw).astype(dw.dtype)) + (
        None,
    ) * 4

  chunked_sum.defvjp(fwd, bwd)
  return chunked_sum


def chunked_weighted_sum(
    token_fn: TokenFn,
    h_s_ND: jax.Array,
    w_s_DV: jax.Array,
    per_token: Any,
    shared: Any,
    weights_N: jax.Array,
    mask_N: jax.Array,
    *,
    width: int,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    dw_blocks: int = DEFAULT_DW_BLOCKS,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Σ_n w_n·ℓ_n with ℓ from student logits h_s·W_s, chunked over tokens.

  The building block of the public functions, usable for custom per-token
  losses. Gradients flow to `h_s_ND` and `w_s_DV` only.

  Args:
    token_fn: (z_CV [C, width] f32, per_token chunk, shared) -> (ℓ_C, aux)
      where aux maps names to [C] values summed over the mask for logging.
    h_s_ND: [N, D] student hidden states (flat tokens).
    w_s_DV: [D, V_s] student unembedding.
    per_token: pytree of [N, ...] arrays chunked alongside the tokens.
    shared: pytree of arrays every chunk sees (e.g. W_t).
    weights_N: [N] f32 aggregation weights (no gradient).
    mask_N: [N] bool mask.
    width: vocabulary width token_fn sees (≤ V_s; slices padded logits).
    chunk_size: most tokens per scan step; the N tokens are split into
      ceil(N / chunk_size) equal chunks (padding at most one per chunk).
      None: `auto_chunk_size` of N, V and D.
    dw_blocks: vocab blocks of the in-place dW accumulation (1 = one update).

  Returns:
    (Σ w·ℓ, {name: Σ_mask aux}).
  """
  n = max(h_s_ND.shape[0], 1)
  if chunk_size is None:
    chunk_size = auto_chunk_size(n, w_s_DV.shape[1], w_s_DV.shape[0])
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}.")
  n_chunks = math.ceil(n / chunk_size)
  chunk = math.ceil(n / n_chunks)
  pad = n_chunks * chunk - h_s_ND.shape[0]

  def prep(x):
    x = jnp.asarray(x)
    if pad:
      x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return _to_chunks(x, n_chunks, chunk)

  return _make_chunked_sum(token_fn, width, dw_blocks)(
      prep(h_s_ND),
      w_s_DV,
      jax.tree.map(prep, per_token),
      shared,
      prep(jnp.asarray(weights_N, jnp.float32)),
      prep(jnp.asarray(mask_N) != 0),
  )


def _flatten_tokens(x: jax.Array, lead: tuple[int, ...], name: str):
  if tuple(x.shape[: len(lead)]) != lead or x.ndim != len(lead) + 1:
    raise ValueError(
        f"{name} has shape {tuple(x.shape)}; expected {lead + ('…',)} (one"
        " row per token, matching mask)."
    )
  return x.reshape((-1, x.shape[-1]))


def _prepare(mask, h_s, w_s, agg, normalizer, max_len, prefix):
  lead = tuple(jnp.shape(h_s)[:-1])
  m = aggregation.check_mask(mask, lead, "mask", "h_s.shape[:-1]")
  if w_s.ndim != 2 or w_s.shape[0] != h_s.shape[-1]:
    raise ValueError(
        f"w_s_DV has shape {tuple(w_s.shape)}; expected (D={h_s.shape[-1]}, V)."
    )
  weights = aggregation.token_weights(m, agg, normalizer, max_len)
  counts = aggregation.count_metrics(prefix, m)
  return lead, m.reshape(-1), weights.reshape(-1), counts


def _zero_masked(x: jax.Array, m_N: jax.Array) -> jax.Array:
  """Rows of masked tokens set to 0: they may hold anything, even NaN."""
  return jnp.where(m_N.reshape(m_N.shape + (1,) * (x.ndim - 1)), x, 0)


def chunked_divergence(
    name: str,
    h_s_ND: jax.Array,
    w_s_DV: jax.Array,
    h_t_NE: jax.Array,
    w_t_EV: jax.Array,
    mask_N: jax.Array,
    *,
    temperature: float = 1.0,
    tau_sq: bool = True,
    beta: float = 0.5,
    alpha: float = 0.1,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    dw_blocks: int = DEFAULT_DW_BLOCKS,
    prefix: str = "distill",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Divergence of student vs teacher from hidden states, chunked over tokens.

  Equals `divergences.divergence(name, h_s @ W_s, h_t @ W_t, mask, ...)` in
  value and gradient without holding [N, V] logits of either model.

  Args:
    name: 'fkl', 'rkl', 'jsd', 'skl', 'srkl' or 'tvd'.
    h_s_ND: [..., D] student final hidden states (after the final norm).
    w_s_DV: [D, V_s] student unembedding (embedding.T if tied).
    h_t_NE: [..., E] teacher hidden states (zero gradient).
    w_t_EV: [E, V_t] teacher unembedding (zero gradient).
    mask_N: [...] completion mask.
    temperature, tau_sq, beta, alpha, agg, normalizer, max_len, vocab_size,
      prefix: as in `divergences.divergence`.
    chunk_size: tokens per scan step (memory ∝ chunk_size·V).
    dw_blocks: vocab blocks of the in-place dW accumulation; bounds the
      update's temporary by [D, V/dw_blocks] on XLA:CPU (1 = one update).

  Returns:
    (loss, metrics) with `<prefix>/{loss,<name>,num_tokens,empty_mask}`.
  """
  divergences.check_name(name)
  aggregation.check_unit_interval("beta", beta)
  aggregation.check_unit_interval("alpha", alpha)
  tau = aggregation.check_temperature(temperature)
  lead, m, weights, counts = _prepare(
      mask_N, h_s_ND, w_s_DV, agg, normalizer, max_len, prefix
  )
  if tuple(h_t_NE.shape[:-1]) != lead:
    raise ValueError(
        f"h_t_NE leading shape {tuple(h_t_NE.shape[:-1])} must equal h_s_ND's"
        f" {lead}."
    )
  if w_t_EV.ndim != 2 or w_t_EV.shape[0] != h_t_NE.shape[-1]:
    raise ValueError(
        f"w_t_EV has shape {tuple(w_t_EV.shape)}; expected"
        f" (E={h_t_NE.shape[-1]}, V)."
    )
  v_s, v_t = w_s_DV.shape[1], w_t_EV.shape[1]
  divergences.slice_vocab(jnp.zeros((v_s,)), vocab_size, v_t, "w_s_DV")
  divergences.slice_vocab(jnp.zeros((v_t,)), vocab_size, v_s, "w_t_EV")
  width = v_s if vocab_size is None else vocab_size

  def token_fn(z_s, teacher_C, w_t):
    h_t_C, m_C = teacher_C
    z_t = _logits(h_t_C, w_t, m_C, width)
    lp_s = divergences.log_softmax_f32(z_s, tau)
    lp_t = jax.lax.stop_gradient(divergences.log_softmax_f32(z_t, tau))
    d = divergences.logprob_divergence(name, lp_s, lp_t, beta=beta, alpha=alpha)
    return d, {}

  value, _ = chunked_weighted_sum(
      token_fn,
      _zero_masked(_flatten_tokens(h_s_ND, lead, "h_s_ND"), m),
      w_s_DV,
      (_zero_masked(_flatten_tokens(h_t_NE, lead, "h_t_NE"), m), m),
      w_t_EV,
      weights,
      m,
      width=width,
      chunk_size=chunk_size,
      dw_blocks=dw_blocks,
  )
  loss = (tau**2 if tau_sq else 1.0) * value
  return loss, {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      f"{prefix}/{name}": jax.lax.stop_gradient(value),
      **counts,
  }


def chunked_topk_divergence(
    h_s_ND: jax.Array,
    w_s_DV: jax.Array,
    teacher_topk_ids: jax.Array,
    teacher_topk_logprobs: jax.Array,
    mask_N: jax.Array,
    *,
    mode: str,
    divergence: str = "fkl",
    temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    tau_sq: bool = True,
    beta: float = 0.5,
    alpha: float = 0.1,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    dw_blocks: int = DEFAULT_DW_BLOCKS,
    prefix: str = "distill",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`topk.topk_divergence` from student hidden states, chunked over tokens.

  Args:
    h_s_ND: [..., D] student hidden states; w_s_DV: [D, V] unembedding.
    teacher_topk_ids: [..., K] int32 cached ids.
    teacher_topk_logprobs: [..., K] cached log-probs at teacher_temperature.
    mask_N: [...] completion mask.
    mode, divergence, temperature, teacher_temperature, tau_sq, beta, alpha:
      as in `topk.topk_divergence`.
    agg, normalizer, max_len: aggregation (see `aggregation`).
    vocab_size: slice the student logits to the tokenizer vocabulary.
    chunk_size: tokens per scan step; dw_blocks: see `chunked_divergence`.
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,<divergence>,num_tokens,empty_mask}`.
  """
  aggregation.check_unit_interval("beta", beta)
  aggregation.check_unit_interval("alpha", alpha)
  lead, m, weights, counts = _prepare(
      mask_N, h_s_ND, w_s_DV, agg, normalizer, max_len, prefix
  )
  v_s = w_s_DV.shape[1]
  width = v_s if vocab_size is None else vocab_size
  divergences.slice_vocab(jnp.zeros((v_s,)), vocab_size, v_s, "w_s_DV")
  k = jnp.shape(teacher_topk_ids)[-1]
  tau, tau_rec = topk.check_topk_inputs(
      jax.ShapeDtypeStruct(lead + (width,), jnp.float32),
      teacher_topk_ids,
      teacher_topk_logprobs,
      mode=mode,
      divergence=divergence,
      temperature=temperature,
      teacher_temperature=teacher_temperature,
  )

  def token_fn(z_s, cache, _):
    ids, lps = cache
    lp_s, lp_t = topk.topk_logprobs(
        z_s, ids, lps, mode=mode, temperature=tau, teacher_temperature=tau_rec
    )
    if mode == "sparse_fkl":
      return divergences.kl_from_logprobs(lp_t, lp_s), {}
    d = divergences.logprob_divergence(
        divergence, lp_s, lp_t, beta=beta, alpha=alpha
    )
    return d, {}

  cache = (
      _zero_masked(jnp.asarray(teacher_topk_ids).reshape(-1, k), m),
      _zero_masked(
          jnp.asarray(teacher_topk_logprobs, jnp.float32).reshape(-1, k), m
      ),
  )
  value, _ = chunked_weighted_sum(
      token_fn,
      _zero_masked(_flatten_tokens(h_s_ND, lead, "h_s_ND"), m),
      w_s_DV,
      cache,
      None,
      weights,
      m,
      width=width,
      chunk_size=chunk_size,
      dw_blocks=dw_blocks,
  )
  loss = (tau**2 if tau_sq else 1.0) * value
  return loss, {
      f"{prefix}/loss": jax.lax.stop_gradient(loss),
      f"{prefix}/{divergence}": jax.lax.stop_gradient(value),
      **counts,
  }


def chunked_cross_entropy(
    h_s_ND: jax.Array,
    w_s_DV: jax.Array,
    targets_N: jax.Array,
    mask_N: jax.Array,
    *,
    agg: str = "token-mean",
    normalizer: jax.Array | float | None = None,
    max_len: int | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    dw_blocks: int = DEFAULT_DW_BLOCKS,
    prefix: str = "sft",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Completion-only cross-entropy (SFT, docs/methods.md, "SFT") from hidden states.

  Equals `sequence.sft_cross_entropy(h_s @ W_s, targets, mask)`.

  Args:
    h_s_ND: [..., D] student hidden states; w_s_DV: [D, V] unembedding.
    targets_N: [...] int target ids (< vocab_size).
    mask_N: [...] completion mask (EOS included).
    agg, normalizer, max_len: aggregation (see `aggregation`).
    vocab_size: slice padded logits to the tokenizer vocabulary.
    chunk_size: tokens per scan step; dw_blocks: see `chunked_divergence`.
    prefix: metric namespace.

  Returns:
    (loss, metrics) with `<prefix>/{loss,accuracy,num_tokens,empty_mask}`.
  """
  lead, m, weights, counts = _prepare(
      mask_N, h_s_ND, w_s_DV, agg, normalizer, max_len, prefix
  )
  if tuple(jnp.shape(targets_N)) != lead:
    raise ValueError(
        f"targets_N has shape {tuple(jnp.shape(targets_N))}; expected {lead}."
    )
  v_s = w_s_DV.shape[1]
  divergences.slice_vocab(jnp.zeros((v_s,)), vocab_size, v_s, "w_s_DV")
  width = v_s if vocab_size is None else vocab_size

  def token_fn(z, y_C, _):
    lse = jax.nn.logsumexp(z, axis=-1)
    z_y = jnp.take_along_axis(z, y_C[:, None], axis=-1)[:, 0]
    hit = (jnp.argmax(z, axis=-1) == y_C).astype(jnp.float32)
    return lse - z_y, {"hits": jax.lax.stop_gradient(hit)}

  value, aux = chunked_weighted_sum(
      token_fn,
      _zero_masked(_flatten_tokens(h_s_ND, lead, "h_s_ND"), m),
      w_s_DV,
      _zero_masked(jnp.asarray(targets_N).reshape(-1), m),
      None,
      weights,
      m,
      width=width,
      chunk_size=chunk_size,
      dw_blocks=dw_blocks,
  )
  n = counts[f"{prefix}/num_tokens"]
  return value, {
      f"{prefix}/loss": jax.lax.stop_gradient(value),
      f"{prefix}/accuracy": aux["hits"] / jnp.maximum(n, 1.0),
      **counts,
  }
