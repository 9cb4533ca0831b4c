"""Decoder-only transformer (Qwen2/2.5, Qwen3, Llama-3.x) in Flax NNX.

Legend: B batch, L length, S cache slots, D d_model, N query heads, K kv
heads, G = N // K query heads per kv head, H head dim, F mlp width, V vocab.

Numerics follow the Hugging Face reference implementations: RMSNorm in fp32
and cast back before the scale, rotate-half RoPE computed in fp32 (with the
Llama-3 frequency scaling), attention softmax in fp32, SwiGLU MLP. Every
parameter carries logical axis names (``out_sharding`` metadata, not sharded
eagerly: ``w2s_jax.sharding`` places them) and activations are pinned at block
boundaries, so the same module runs on one CPU or a pod slice.

Used functionally: ``graphdef, state = nnx.split(model)`` outside jit and
``nnx.merge(graphdef, state)`` inside it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from w2s_jax import sharding
from w2s_jax.models import attention as attention_lib
from w2s_jax.models import config as model_config
from w2s_jax.models import dense, kv_cache

Config = model_config.TransformerConfig
_NEG_INF = float(jnp.finfo(jnp.float32).min) / 2


def fuse_projections() -> bool:
  """Whether q/k/v and gate/up run as one matmul each over several tokens.

  The parameters stay separate (the Hugging Face layout), so fusing means
  concatenating the weights inside every step. On accelerators that is a
  cheap copy that saves kernels; on XLA:CPU the concatenation along the
  output axis runs in a slow loop (about 55 ms of a 130 ms prefill at
  d512/L8) and two matmuls are no slower than one fused one (train step
  2.66-2.72 s separate vs 2.72-2.82 s fused, profiled), so CPU keeps them
  separate. One-token decoding never fuses (a per-step weight copy).
  """
  return jax.default_backend() != "cpu"


def _param(rngs, init, shape, names, dtype):
  value = init(rngs.params(), shape, dtype)
  return nnx.Param(value, out_sharding=names, eager_sharding=False)


_normal = jax.nn.initializers.normal(0.02)
_zeros = jax.nn.initializers.zeros
_ones = jax.nn.initializers.ones


class RMSNorm(nnx.Module):
  """RMSNorm in fp32; the result is cast back before the scale (as in HF)."""

  def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = _param(rngs, _ones, (dim,), ("norm",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
    return self.scale.get_value().astype(x.dtype) * y


def rope_inv_freq(cfg: Config) -> jax.Array:
  """Inverse RoPE frequencies [H/2] in fp32, Llama-3 scaling applied."""
  h = cfg.head_dim
  exponent = jnp.arange(0, h, 2, dtype=jnp.float32) / h
  inv_freq = 1.0 / (cfg.rope_theta**exponent)
  s = cfg.rope_scaling
  if s is None:
    return inv_freq
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (
      s.original_max_position_embeddings / wavelen - s.low_freq_factor
  ) / (s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(
    x_BLNH: jax.Array, positions_BL: jax.Array, inv_freq: jax.Array
) -> jax.Array:
  """Rotate-half RoPE (HF convention: first and second halves pair up)."""
  freqs_BLF = positions_BL.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs_BLF, freqs_BLF], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb).astype(x_BLNH.dtype), jnp.sin(emb).astype(
      x_BLNH.dtype
  )
  x1, x2 = jnp.split(x_BLNH, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x_BLNH * cos + rotated * sin


class Attention(nnx.Module):
  """Grouped-query attention with optional qkv bias, qk-norm and KV cache."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = model_config.parse_dtype(cfg.param_dtype)
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q_DNH = _param(
        rngs, _normal, (d, n, h), ("embed", "heads", "head_dim"), pd
    )
    self.k_DKH = _param(
        rngs, _normal, (d, k, h), ("embed", "kv_heads", "head_dim"), pd
    )
    self.v_DKH = _param(
        rngs, _normal, (d, k, h), ("embed", "kv_heads", "head_dim"), pd
    )
    self.o_NHD = _param(
        rngs, _normal, (n, h, d), ("heads", "head_dim", "embed"), pd
    )
    if cfg.qkv_bias:
      self.q_bias_NH = _param(rngs, _zeros, (n, h), ("heads", "head_dim"), pd)
      self.k_bias_KH = _param(
          rngs, _zeros, (k, h), ("kv_heads", "head_dim"), pd
      )
      self.v_bias_KH = _param(
          rngs, _zeros, (k, h), ("kv_heads", "head_dim"), pd
      )
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, cfg.norm_eps, param_dtype=pd, rngs=rngs)
      self.k_norm = RMSNorm(h, cfg.norm_eps, param_dtype=pd, rngs=rngs)

  def _fused_qkv(self, x_BLD, prec):
    """q, k, v from one [D, (N + 2K) * H] matmul (fewer, larger kernels;
    the parameters stay separate, in the Hugging Face layout)."""
    cfg = self.cfg
    w = lambda p: p.get_value().astype(x_BLD.dtype)
    b, l, d = x_BLD.shape
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    w_DX = jnp.concatenate(
        [
            w(self.q_DNH).reshape(d, n * h),
            w(self.k_DKH).reshape(d, k * h),
            w(self.v_DKH).reshape(d, k * h),
        ],
        axis=1,
    )
    qkv = dense.project(x_BLD, w_DX, 1, prec)
    if cfg.qkv_bias:
      bias_X = jnp.concatenate([
          w(self.q_bias_NH).reshape(-1),
          w(self.k_bias_KH).reshape(-1),
          w(self.v_bias_KH).reshape(-1),
      ])
      qkv = qkv + bias_X
    q = qkv[..., : n * h].reshape(b, l, n, h)
    k_ = qkv[..., n * h : (n + k) * h].reshape(b, l, k, h)
    v = qkv[..., (n + k) * h :].reshape(b, l, k, h)
    return q, k_, v

  def __call__(
      self,
      x_BLD: jax.Array,
      positions_BL: jax.Array,
      ctx: "_Context",
      layer_cache: kv_cache.LayerCache | None,
  ) -> tuple[jax.Array, kv_cache.LayerCache | None]:
    cfg = self.cfg
    dt = x_BLD.dtype
    prec = cfg.precision
    w = lambda p: p.get_value().astype(dt)
    if x_BLD.shape[1] > 1 and fuse_projections():
      q, k_, v = self._fused_qkv(x_BLD, prec)
    else:
      # See fuse_projections: CPU, and one-token decoding everywhere (a
      # concatenation in the decode loop would copy the weights every step).
      q = dense.project(x_BLD, w(self.q_DNH), 1, prec)
      k_ = dense.project(x_BLD, w(self.k_DKH), 1, prec)
      v = dense.project(x_BLD, w(self.v_DKH), 1, prec)
      if cfg.qkv_bias:
        q = q + w(self.q_bias_NH)
        k_ = k_ + w(self.k_bias_KH)
        v = v + w(self.v_bias_KH)
    if cfg.qk_norm:
      q, k_ = self.q_norm(q), self.k_norm(k_)
    inv_freq = rope_inv_freq(cfg)
    q = apply_rope(q, positions_BL, inv_freq)
    k_ = apply_rope(k_, positions_BL, inv_freq)
    q = sharding.shard(q, "batch", "length", "act_heads", None)
    k_ = sharding.shard(k_, "batch", "length", "act_kv_heads", None)
    v = sharding.shard(v, "batch", "length", "act_kv_heads", None)

    if layer_cache is not None:
      layer_cache = kv_cache.update_layer(
          layer_cache, k_, v, ctx.end_index, ctx.layer_index
      )
    if ctx.mask_BLS is None:  # self-attention over these L tokens
      out = attention_lib.attention(
          q, k_, v, ctx.segment_ids_BL, cfg.attention, prec
      )
    else:  # against the cache (decoding)
      k_all, v_all = kv_cache.layer_kv(layer_cache, ctx.layer_index)
      out = attention_lib.xla_attention(
          q, k_all.astype(dt), v_all.astype(dt), ctx.mask_BLS, prec
      )
    y = dense.project(out, w(self.o_NHD), 2, prec)
    return y, layer_cache


class Mlp(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    pd = model_config.parse_dtype(cfg.param_dtype)
    d, f = cfg.d_model, cfg.mlp_dim
    self.gate_DF = _param(rngs, _normal, (d, f), ("embed", "mlp"), pd)
    self.up_DF = _param(rngs, _normal, (d, f), ("embed", "mlp"), pd)
    self.down_FD = _param(rngs, _normal, (f, d), ("mlp", "embed"), pd)

  def __call__(self, x_BLD: jax.Array, precision: str) -> jax.Array:
    dt = x_BLD.dtype
    w = lambda p: p.get_value().astype(dt)
    if x_BLD.shape[1] > 1 and fuse_projections():
      # gate and up as one [D, 2F] matmul (separate parameters on disk).
      f = self.up_DF.shape[1]
      w_DX = jnp.concatenate([w(self.gate_DF), w(self.up_DF)], axis=1)
      gu = dense.project(x_BLD, w_DX, 1, precision)
      gate, up = gu[..., :f], gu[..., f:]
    else:  # see fuse_projections
      gate = dense.project(x_BLD, w(self.gate_DF), 1, precision)
      up = dense.project(x_BLD, w(self.up_DF), 1, precision)
    h = jax.nn.silu(gate) * up
    h = sharding.shard(h, "batch", "length", "act_mlp")
    return dense.project(h, w(self.down_FD), 1, precision)


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(.))."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    pd = model_config.parse_dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(
        cfg.d_model, cfg.norm_eps, param_dtype=pd, rngs=rngs
    )
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(
        cfg.d_model, cfg.norm_eps, param_dtype=pd, rngs=rngs
    )
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x_BLD, positions_BL, ctx, layer_cache):
    y, layer_cache = self.attn(
        self.attn_norm(x_BLD), positions_BL, ctx, layer_cache
    )
    x_BLD = x_BLD + y
    x_BLD = x_BLD + self.mlp(self.mlp_norm(x_BLD), self.attn.cfg.precision)
    x_BLD = sharding.shard(x_BLD, "batch", "length", "act_embed")
    return x_BLD, layer_cache


@struct.dataclass
class _Context:
  """What every block's attention needs besides its input.

  ``mask_BLS`` is None for self-attention over the L new tokens (training,
  prefill into an empty cache: the configured backend runs it); otherwise
  the [B, L, S] mask against the cache slots (decoding, XLA path).
  """

  segment_ids_BL: jax.Array | None
  mask_BLS: jax.Array | None
  end_index: jax.Array | None
  layer_index: jax.Array | None = None


def _block_apply(block, x, positions, ctx, layer_cache):
  return block(x, positions, ctx, layer_cache)


_REMAT_POLICIES = {
    "block": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def _stack_blocks(blocks: list[Block]) -> Block:
  """One Block whose parameters carry a leading 'layers' axis."""
  graphdef, _ = nnx.split(blocks[0])
  states = [nnx.state(b) for b in blocks]

  def stack(*vs):
    names = vs[0].get_metadata().get("out_sharding")
    value = jnp.stack([v.get_value() for v in vs])
    return nnx.Param(
        value, out_sharding=("layers", *names), eager_sharding=False
    )

  stacked = jax.tree.map(
      stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable)
  )
  return nnx.merge(graphdef, stacked)


def default_positions(segment_ids_BL: jax.Array) -> jax.Array:
  """Positions restarting at 0 at each segment start; 0 on padding."""
  _, l = segment_ids_BL.shape
  idx = jnp.arange(l, dtype=jnp.int32)
  prev = jnp.pad(segment_ids_BL[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  is_start = segment_ids_BL != prev
  start = jax.lax.cummax(jnp.where(is_start, idx, 0), axis=1)
  return jnp.where(segment_ids_BL != 0, idx - start, 0).astype(jnp.int32)


class Transformer(nnx.Module):
  """Token ids [B, L] -> logits [B, L, V] (or final hidden states)."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = model_config.parse_dtype(cfg.param_dtype)
    self.embed_VD = _param(
        rngs, _normal, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pd
    )
    # Fails here, at model construction, when the platform lacks it.
    attention_lib.check_backend(cfg.attention)
    blocks = [Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)]
    # Scanned: built layer by layer (the same values as unrolled for a seed),
    # then stacked on a leading 'layers' axis.
    self.blocks = _stack_blocks(blocks) if cfg.scan_layers else nnx.List(blocks)
    self.final_norm = RMSNorm(
        cfg.d_model, cfg.norm_eps, param_dtype=pd, rngs=rngs
    )
    if not cfg.tie_embeddings:
      self.lm_head_DV = _param(
          rngs, _normal, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pd
      )

  def hidden(
      self,
      tokens_BL: jax.Array,
      positions_BL: jax.Array | None = None,
      segment_ids_BL: jax.Array | None = None,
      cache: kv_cache.Cache | None = None,
      cache_is_empty: bool = False,
  ) -> tuple[jax.Array, kv_cache.Cache | None]:
    """Final-norm hidden states [B, L, D] and the updated cache.

    Args:
      tokens_BL: int token ids.
      positions_BL: RoPE positions; default restarts at each segment (and
        continues from the cache's filled slots when decoding).
      segment_ids_BL: 0 marks padding (left padding for prompts), equal
        non-zero ids mark one sequence (several for packed rows). Default: 1
        (then the attention backends run their pure causal kernel).
      cache: a KV cache; the L tokens are written at its ``end_index``.
      cache_is_empty: the caller promises the cache holds nothing yet
        (prefill): attention then runs over the L tokens with the configured
        backend instead of against every cache slot.
    """
    cfg = self.cfg
    dt = model_config.parse_dtype(cfg.dtype)
    given_segments = segment_ids_BL is not None
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones(tokens_BL.shape, jnp.int32)
    segment_ids_BL = segment_ids_BL.astype(jnp.int32)
    if positions_BL is None:
      positions_BL = default_positions(segment_ids_BL)
      if cache is not None and not cache_is_empty:
        filled_B = jnp.sum(cache.segment_ids_BS != 0, axis=1, dtype=jnp.int32)
        run_BL = jnp.cumsum(segment_ids_BL != 0, axis=1, dtype=jnp.int32) - 1
        positions_BL = jnp.maximum(filled_B[:, None] + run_BL, 0)

    end_index, mask_BLS = None, None
    if cache is not None:
      end_index = cache.end_index
      cache = kv_cache.write_segments(cache, segment_ids_BL)
      if not cache_is_empty:
        mask_BLS = kv_cache.attention_mask(
            segment_ids_BL, cache.segment_ids_BS, end_index
        )
    ctx = _Context(
        segment_ids_BL=segment_ids_BL if given_segments else None,
        mask_BLS=mask_BLS,
        end_index=end_index,
    )

    x = jnp.take(self.embed_VD.get_value(), tokens_BL, axis=0).astype(dt)
    x = sharding.shard(x, "batch", "length", "act_embed")

    block_fn = _block_apply
    if cfg.remat != "none":
      block_fn = nnx.remat(_block_apply, policy=_REMAT_POLICIES[cfg.remat])
    if cfg.scan_layers:
      x, layers = self._scan_blocks(block_fn, x, positions_BL, ctx, cache)
    else:
      layers = []
      for i, block in enumerate(self.blocks):
        layer_cache = None if cache is None else cache.layers[i]
        x, layer_cache = block_fn(block, x, positions_BL, ctx, layer_cache)
        layers.append(layer_cache)
      layers = tuple(layers)
    x = self.final_norm(x)
    if cache is not None:
      cache = cache.replace(
          layers=layers, end_index=end_index + tokens_BL.shape[1]
      )
    return x, cache

  def _scan_blocks(self, block_fn, x, positions_BL, ctx, cache):
    """The stacked blocks under ``jax.lax.scan``.

    The stacked cache rides in the carry and each layer writes its new
    tokens in place at its own index (no per-step copy of the cache).
    """
    graphdef, params = nnx.split(self.blocks)

    def body(carry, params_i):
      x, i, layer_cache = carry
      block = nnx.merge(graphdef, params_i)
      x, layer_cache = block_fn(
          block, x, positions_BL, ctx.replace(layer_index=i), layer_cache
      )
      return (x, i + 1, layer_cache), None

    layer_cache = None if cache is None else cache.layers[0]
    (x, _, layer_cache), _ = jax.lax.scan(
        body, (x, jnp.int32(0), layer_cache), params
    )
    return x, (None if cache is None else (layer_cache,))

  def unembedding_DV(self) -> jax.Array:
    """The [D, V] output projection (the embedding transposed when tied)."""
    if self.cfg.tie_embeddings:
      return self.embed_VD.get_value().T
    return self.lm_head_DV.get_value()

  def logits(self, hidden_BLD: jax.Array) -> jax.Array:
    dt = hidden_BLD.dtype
    if self.cfg.tie_embeddings:
      # Contract against [V, D] directly: a transposed copy of the table
      # would otherwise be materialised (every decode step on XLA:CPU).
      w_VD = self.embed_VD.get_value().astype(dt)
      logits = jnp.einsum(
          "BLD,VD->BLV", hidden_BLD, w_VD, precision=self.cfg.precision
      )
    else:
      w_DV = self.lm_head_DV.get_value().astype(dt)
      logits = jnp.einsum(
          "BLD,DV->BLV", hidden_BLD, w_DV, precision=self.cfg.precision
      )
    return sharding.shard(logits, "batch", "length", "act_vocab")

  def __call__(
      self,
      tokens_BL: jax.Array,
      positions_BL: jax.Array | None = None,
      segment_ids_BL: jax.Array | None = None,
      cache: kv_cache.Cache | None = None,
  ):
    """Logits [B, L, V]; with a cache, ``(logits, new_cache)``."""
    h, new_cache = self.hidden(tokens_BL, positions_BL, segment_ids_BL, cache)
    logits = self.logits(h)
    return logits if cache is None else (logits, new_cache)


def init_model(cfg: Config, seed: int = 0, mesh=None) -> Transformer:
  """A randomly initialised model.

  Without a mesh it is built eagerly on the default device. With a mesh the
  initialiser is jitted with every parameter's sharding as its output
  sharding, so each device materialises only its own shards (a 7B model
  never exists whole on one device); the values equal the eager ones up to
  float rounding (jit may fuse the initialiser scaling).
  """
  if mesh is None:
    return Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, abstract = nnx.split(abstract_model(cfg))
  shardings = sharding.state_shardings(abstract, mesh)

  def init():
    return nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))

  state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def abstract_model(cfg: Config) -> Transformer:
  """The model with ShapeDtypeStruct leaves: no memory allocated.

  Traced under an empty abstract mesh: parameters carry *logical* axis names
  ('embed', ...), which are not axes of whatever physical mesh may be active
  (``jax.set_mesh`` in the trainers); callers map them with
  ``sharding.state_shardings``.
  """
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
