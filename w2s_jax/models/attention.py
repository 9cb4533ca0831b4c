"""Causal self-attention with selectable backends, one function.

Legend: B batch, L query length, S key length, N query heads, K kv heads,
G = N // K, H head dim.

Backends (``TransformerConfig.attention``):

* ``'xla'``: einsum scores with an fp32 softmax and an explicit [B, L, S]
  mask. The reference: every other backend is tested against it. It also
  serves decoding against a KV cache (one query per step).
* ``'cudnn'``: ``jax.nn.dot_product_attention(implementation='cudnn')``,
  cuDNN's fused flash attention on NVIDIA GPUs. Plain causal rows run as a
  pure causal kernel; left padding and packed segments become a boolean mask
  that JAX folds into an additive bias. cuDNN takes only fp16/bf16 inputs
  with a head dim that is a multiple of 8 and at most 128; other calls fall
  back to ``'xla'`` and say so once in the log.
* ``'pallas'``: the TPU flash attention kernel that ships with JAX
  (``jax.experimental.pallas.ops.tpu.flash_attention``) with segment ids for
  padding and packing; runs on CPU in Pallas interpret mode for tests.
* ``'auto'``: cuDNN on GPU, Pallas on TPU, XLA elsewhere.

A query at position l sees a key at position s iff s <= l and both carry the
same non-zero segment id (0 = padding). Rows of padding queries are garbage
in every backend (callers mask them out of losses); valid rows agree.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("auto", "xla", "cudnn", "pallas")
# Backends each platform can run ('auto' resolves to the first after it).
PLATFORM_BACKENDS = {
    "cpu": ("auto", "xla"),
    "gpu": ("auto", "cudnn", "xla"),
    "cuda": ("auto", "cudnn", "xla"),
    "rocm": ("auto", "xla"),
    "tpu": ("auto", "pallas", "xla"),
}
_NEG_INF = float(np.finfo(np.float32).min) / 2
_PALLAS_BLOCK = 128
_logged: set[str] = set()


def _log_once(msg: str) -> None:
  if msg not in _logged:
    _logged.add(msg)
    log.warning(msg)


def check_backend(backend: str, platform: str | None = None) -> str:
  """The concrete backend for ``platform``; raises when it cannot run there.

  Args:
    backend: one of ``BACKENDS``.
    platform: 'cpu', 'gpu', 'tpu'...; default: ``jax.default_backend()``.

  Raises:
    ValueError: naming the backend, the platform and the choices there.
  """
  platform = platform or jax.default_backend()
  choices = PLATFORM_BACKENDS.get(platform, ("auto", "xla"))
  if backend not in BACKENDS or backend not in choices:
    raise ValueError(
        f"attention backend {backend!r} is not available on platform"
        f" {platform!r}; choices there: {list(choices)} (set"
        " model.overrides.attention / TransformerConfig.attention)."
    )
  if backend == "auto":
    return choices[1]
  return backend


def causal_mask(
    q_segment_ids_BL: jax.Array | None, length: int, batch: int
) -> jax.Array:
  """The reference [B, L, L] mask: causal, same non-zero segment."""
  causal_LL = jnp.tril(jnp.ones((length, length), bool))
  if q_segment_ids_BL is None:
    return jnp.broadcast_to(causal_LL, (batch, length, length))
  seg = q_segment_ids_BL
  same_BLL = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
  return causal_LL[None] & same_BLL


def xla_attention(
    q_BLNH: jax.Array,
    k_BSKH: jax.Array,
    v_BSKH: jax.Array,
    mask_BLS: jax.Array,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
  """Reference attention: fp32 scores and softmax, any [B, L, S] mask."""
  b, l, n, h = q_BLNH.shape
  k = k_BSKH.shape[2]
  dt = q_BLNH.dtype
  q = q_BLNH.reshape(b, l, k, n // k, h)
  scores = jnp.einsum(
      "BLKGH,BSKH->BKGLS",
      q,
      k_BSKH,
      preferred_element_type=jnp.float32,
      precision=precision,
  ) / jnp.sqrt(jnp.float32(h))
  scores = jnp.where(mask_BLS[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dt)
  out = jnp.einsum(
      "BKGLS,BSKH->BLKGH", probs, v_BSKH.astype(dt), precision=precision
  )
  return out.reshape(b, l, n, h)


def _cudnn_ok(q_BLNH: jax.Array) -> str | None:
  """Why cuDNN cannot take this call, or None when it can."""
  h = q_BLNH.shape[-1]
  if q_BLNH.dtype not in (jnp.bfloat16, jnp.float16):
    return f"dtype {q_BLNH.dtype} (cuDNN takes bfloat16/float16)"
  if h % 8 or h > 128:
    return f"head_dim {h} (cuDNN takes multiples of 8 up to 128)"
  return None


def cudnn_attention(
    q_BLNH: jax.Array,
    k_BLKH: jax.Array,
    v_BLKH: jax.Array,
    segment_ids_BL: jax.Array | None,
    implementation: str = "cudnn",
) -> jax.Array:
  """``jax.nn.dot_product_attention`` with the model's masking.

  ``implementation='xla'`` gives JAX's own XLA lowering of the same masks
  (what the tests compare on CPU).
  """
  mask = None
  if segment_ids_BL is not None:
    seg = segment_ids_BL
    same_BLL = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    mask = same_BLL[:, None]  # [B, 1, L, S]; causality comes from is_causal
  return jax.nn.dot_product_attention(
      q_BLNH,
      k_BLKH,
      v_BLKH,
      mask=mask,
      is_causal=True,
      implementation=implementation,
  )


def _pallas_block_sizes(length: int):
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  b = min(_PALLAS_BLOCK, length)
  return fa.BlockSizes(
      block_q=b,
      block_k_major=b,
      block_k=b,
      block_b=1,
      block_q_major_dkv=b,
      block_k_major_dkv=b,
      block_k_dkv=b,
      block_q_dkv=b,
      block_k_major_dq=b,
      block_k_dq=b,
      block_q_dq=b,
  )


def pallas_attention(
    q_BLNH: jax.Array,
    k_BLKH: jax.Array,
    v_BLKH: jax.Array,
    segment_ids_BL: jax.Array | None,
) -> jax.Array:
  """JAX's Pallas TPU flash attention.

  The kernel wants [B, N, L, H] with as many kv heads as query heads, and a
  length that its blocks divide: kv heads are repeated (their gradients sum
  back) and the length is padded with segment id 0. On CPU it runs only
  when lowered under ``pltpu.force_tpu_interpret_mode()`` (tests).
  """
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  b, l, n, h = q_BLNH.shape
  g = n // k_BLKH.shape[2]
  seg = segment_ids_BL
  if seg is None:
    seg = jnp.ones((b, l), jnp.int32)
  pad = (-l) % _PALLAS_BLOCK if l > _PALLAS_BLOCK else 0
  to_bnlh = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(
      0, 2, 1, 3
  )
  q = to_bnlh(q_BLNH)
  k = to_bnlh(jnp.repeat(k_BLKH, g, axis=2))
  v = to_bnlh(jnp.repeat(v_BLKH, g, axis=2))
  seg = jnp.pad(seg.astype(jnp.int32), ((0, 0), (0, pad)))
  call = functools.partial(
      fa.flash_attention,
      segment_ids=fa.SegmentIds(q=seg, kv=seg),
      causal=True,
      sm_scale=1.0 / float(np.sqrt(h)),
      block_sizes=_pallas_block_sizes(l + pad),
  )
  out = call(q, k, v)
  return out.transpose(0, 2, 1, 3)[:, :l]


def attention(
    q_BLNH: jax.Array,
    k_BLKH: jax.Array,
    v_BLKH: jax.Array,
    segment_ids_BL: jax.Array | None,
    backend: str = "auto",
    precision: jax.lax.PrecisionLike = None,
    interpret: bool = False,
) -> jax.Array:
  """Causal self-attention over L tokens (training and prefill).

  Args:
    q_BLNH: queries (RoPE applied), compute dtype.
    k_BLKH: keys of the same L tokens.
    v_BLKH: values.
    segment_ids_BL: 0 = padding, equal non-zero ids = one sequence; None
      means one unpadded sequence per row (the pure causal kernel).
    backend: one of ``BACKENDS`` (checked against the platform).
    precision: matmul precision of the XLA path.
    interpret: skip the platform check for 'pallas' (CPU tests, which
      lower the kernel under ``pltpu.force_tpu_interpret_mode()``).

  Returns:
    [B, L, N, H] in the compute dtype.
  """
  if interpret and backend == "pallas":
    chosen = "pallas"
  else:
    chosen = check_backend(backend)
  if chosen == "cudnn":
    why = _cudnn_ok(q_BLNH)
    if why is None:
      return cudnn_attention(q_BLNH, k_BLKH, v_BLKH, segment_ids_BL)
    _log_once(f"attention: cuDNN cannot take {why}; using the XLA path.")
  elif chosen == "pallas":
    return pallas_attention(q_BLNH, k_BLKH, v_BLKH, segment_ids_BL)
  b, l = q_BLNH.shape[:2]
  mask_BLL = causal_mask(segment_ids_BL, l, b)
  return xla_attention(q_BLNH, k_BLKH, v_BLKH, mask_BLL, precision)
