"""Per-layer KV cache pytree with a static length, and the attention mask.

Legend: B batch, L new tokens, S cache slots, K kv heads, H head dim.

Slots are written left to right from ``end_index`` (shared by all rows:
ragged prompts are left-padded, so every row writes the same slot each step).
``segment_ids_BS`` marks what a slot holds: 0 for empty or padding, otherwise
the segment id of the token (1 for ordinary sequences, 1.. for packed ones).
A query at slot q sees a key at slot s iff s <= q, the key slot is non-empty
and both carry the same segment id.

With ``scan_layers`` the cache holds one ``LayerCache`` whose arrays carry a
leading layer axis ([layers, B, S, K, H]); each scanned layer writes and reads
its own index in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from w2s_jax import sharding
from w2s_jax.models import config as model_config


@struct.dataclass
class LayerCache:
  k_BSKH: jax.Array
  v_BSKH: jax.Array


@struct.dataclass
class Cache:
  layers: tuple[LayerCache, ...]
  segment_ids_BS: jax.Array
  end_index: jax.Array  # int32 scalar

  @property
  def max_len(self) -> int:
    return self.segment_ids_BS.shape[1]


def init_cache(
    cfg: model_config.TransformerConfig,
    batch_size: int,
    max_len: int | None = None,
    dtype: str | None = None,
) -> Cache:
  """An empty cache for ``batch_size`` rows and ``max_len`` slots."""
  max_len = cfg.max_len if max_len is None else int(max_len)
  dt = model_config.parse_dtype(dtype or cfg.dtype)
  shape = (batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)

  names = ("batch", "cache_length", "act_kv_heads", None)
  if cfg.scan_layers:
    shape, names = (cfg.num_layers, *shape), (None, *names)

  def zeros():
    return sharding.shard(jnp.zeros(shape, dt), *names)

  num = 1 if cfg.scan_layers else cfg.num_layers
  layers = tuple(LayerCache(k_BSKH=zeros(), v_BSKH=zeros()) for _ in range(num))
  return Cache(
      layers=layers,
      segment_ids_BS=jnp.zeros((batch_size, max_len), jnp.int32),
      end_index=jnp.zeros((), jnp.int32),
  )


def write_segments(cache: Cache, segment_ids_BL: jax.Array) -> Cache:
  """Records the segment ids of L new tokens at slots [end, end + L)."""
  seg = jax.lax.dynamic_update_slice(
      cache.segment_ids_BS,
      segment_ids_BL.astype(jnp.int32),
      (jnp.int32(0), cache.end_index),
  )
  return cache.replace(segment_ids_BS=seg)


def update_layer(
    layer: LayerCache,
    k_BLKH: jax.Array,
    v_BLKH: jax.Array,
    end_index: jax.Array,
    layer_index: jax.Array | None = None,
) -> LayerCache:
  """Writes new keys/values at slots [end_index, end_index + L).

  With ``layer_index`` the cache is stacked and only that layer's slots are
  written (in place inside a scan).
  """
  zero = jnp.int32(0)
  idx = (zero, end_index, zero, zero)
  if layer_index is not None:
    idx = (layer_index, *idx)
    k_BLKH, v_BLKH = k_BLKH[None], v_BLKH[None]
  k = jax.lax.dynamic_update_slice(
      layer.k_BSKH, k_BLKH.astype(layer.k_BSKH.dtype), idx
  )
  v = jax.lax.dynamic_update_slice(
      layer.v_BSKH, v_BLKH.astype(layer.v_BSKH.dtype), idx
  )
  return LayerCache(k_BSKH=k, v_BSKH=v)


def layer_kv(
    layer: LayerCache, layer_index: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Keys and values [B, S, K, H] of one layer (indexed when stacked)."""
  if layer_index is None:
    return layer.k_BSKH, layer.v_BSKH
  take = lambda x: jax.lax.dynamic_index_in_dim(x, layer_index, keepdims=False)
  return take(layer.k_BSKH), take(layer.v_BSKH)


def attention_mask(
    q_segment_ids_BL: jax.Array,
    k_segment_ids_BS: jax.Array,
    q_offset: jax.Array | int = 0,
) -> jax.Array:
  """Causal, segment-aware mask ``[B, L, S]`` (True = may attend).

  Args:
    q_segment_ids_BL: segment ids of the queries (0 = padding).
    k_segment_ids_BS: segment ids of the key slots (0 = empty/padding).
    q_offset: slot of the first query (the cache's end_index before the
      write; 0 without a cache).
  """
  q_slot_L = jnp.arange(q_segment_ids_BL.shape[1]) + q_offset
  k_slot_S = jnp.arange(k_segment_ids_BS.shape[1])
  causal_LS = k_slot_S[None, :] <= q_slot_L[:, None]
  same_BLS = q_segment_ids_BL[:, :, None] == k_segment_ids_BS[:, None, :]
  valid_BS = k_segment_ids_BS != 0
  return causal_LS[None] & same_BLS & valid_BS[:, None, :]
