"""One frozen model config for the Qwen2/2.5, Qwen3 and Llama-3.x families.

Teacher and student are two ``TransformerConfig`` instances, never two
classes. ``PRESETS`` holds the real checkpoint shapes (so random models of the
right size can be built for benchmarks, and loaded checkpoints can be checked
against them) and tiny CPU shapes for tests and the study.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}
REMAT_POLICIES = ("none", "block", "dots", "dots_saveable")
# Attention kernels (models/attention.py checks them against the platform).
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "pallas")
# Matmul precision of the model's einsums; '' picks by compute dtype:
# float32 -> 'highest' (true fp32 even where the default is TF32 or bf16
# passes, so fp32 parity with transformers holds on GPU and TPU), bfloat16 /
# float16 -> 'default' (the hardware's fast path).
MATMUL_PRECISIONS = ("", "default", "high", "highest")


def parse_dtype(name: Any) -> Any:
  """'float32' | 'bfloat16' | 'float16' (or a jnp dtype) -> jnp dtype."""
  if not isinstance(name, str):
    try:
      name = jnp.dtype(name).name
    except TypeError:
      pass
  if name not in _DTYPES:
    raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}.")
  return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 ('llama3') frequency-dependent RoPE scaling."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and numerics of a decoder-only transformer.

  Attributes:
    vocab_size: embedding rows (may exceed the tokenizer's size: Qwen pads).
    d_model: residual width D.
    num_layers: number of blocks.
    num_heads: query heads N.
    num_kv_heads: key/value heads K (GQA when K < N; N % K == 0).
    head_dim: H; may differ from d_model // num_heads (Qwen3).
    mlp_dim: SwiGLU hidden width F.
    rope_theta: RoPE base.
    rope_scaling: Llama-3 scaling, or None.
    norm_eps: RMSNorm epsilon.
    qkv_bias: biases on q/k/v projections (Qwen2).
    qk_norm: RMSNorm over head_dim on q and k before RoPE (Qwen3).
    tie_embeddings: unembedding is the embedding transposed.
    model_type: Hugging Face ``model_type`` written on export.
    param_dtype: storage dtype of parameters.
    dtype: compute dtype of matmuls (softmax and norms are always fp32).
    max_len: default KV-cache length / maximum position.
    remat: 'none', 'block' (recompute each block), 'dots' (save matmuls
      without batch dims: the weight matmuls), 'dots_saveable' (save every
      matmul, attention scores included: least recompute, most memory).
    attention: attention backend for training and prefill, one of
      ``ATTENTION_BACKENDS`` ('auto': cuDNN on GPU, Pallas on TPU, XLA on
      CPU); decoding against a cache always uses the XLA one-query path.
    matmul_precision: one of ``MATMUL_PRECISIONS``; '' = by compute dtype
      (see ``precision``).
    scan_layers: stack the blocks' parameters on a leading 'layers' axis and
      run them under ``jax.lax.scan`` (compile time flat in depth). The
      Hugging Face files on disk are the same either way.
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  qk_norm: bool = False
  tie_embeddings: bool = False
  model_type: str = "qwen2"
  param_dtype: str = "float32"
  dtype: str = "float32"
  max_len: int = 2048

  remat: str = "none"
  attention: str = "auto"
  matmul_precision: str = ""
  scan_layers: bool = False

  def __post_init__(self):
    for name in (
        "vocab_size",
        "d_model",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "mlp_dim",
        "max_len",
    ):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"TransformerConfig.{name} must be positive.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads"
          f" ({self.num_kv_heads})."
      )
    if self.head_dim % 2:
      raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE.")
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"model_type {self.model_type!r} is not supported; supported:"
          f" {SUPPORTED_MODEL_TYPES}."
      )
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat {self.remat!r} is not one of {REMAT_POLICIES}.")
    if self.attention not in ATTENTION_BACKENDS:
      raise ValueError(
          f"attention {self.attention!r} is not one of {ATTENTION_BACKENDS}."
      )
    if self.matmul_precision not in MATMUL_PRECISIONS:
      raise ValueError(
          f"matmul_precision {self.matmul_precision!r} is not one of"
          f" {MATMUL_PRECISIONS} ('' = 'highest' for float32 compute,"
          " 'default' for bfloat16/float16)."
      )
    parse_dtype(self.param_dtype)
    parse_dtype(self.dtype)

  @property
  def precision(self) -> str:
    """The matmul precision in effect (``matmul_precision`` resolved)."""
    if self.matmul_precision:
      return self.matmul_precision
    return "highest" if parse_dtype(self.dtype) == jnp.float32 else "default"

  @property
  def num_groups(self) -> int:
    return self.num_heads // self.num_kv_heads

  def replace(self, **kw: Any) -> "TransformerConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self, include_embedding: bool = True) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, h = self.d_model, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * h
    block = attn + 3 * d * self.mlp_dim + 2 * d
    n = self.num_layers * block + d
    if include_embedding:
      n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
    elif not self.tie_embeddings:
      n += self.vocab_size * d  # the unembedding is a matmul, count it
    return n


def _qwen25(d, layers, heads, kv, mlp, vocab=151_936, tie=True):
  return TransformerConfig(
      vocab_size=vocab,
      d_model=d,
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=kv,
      head_dim=d // heads,
      mlp_dim=mlp,
      rope_theta=1_000_000.0,
      norm_eps=1e-6,
      qkv_bias=True,
      tie_embeddings=tie,
      model_type="qwen2",
      max_len=32_768,
  )


def _qwen3(d, layers, heads, kv, mlp, tie=True):
  return TransformerConfig(
      vocab_size=151_936,
      d_model=d,
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=kv,
      head_dim=128,
      mlp_dim=mlp,
      rope_theta=1_000_000.0,
      norm_eps=1e-6,
      qk_norm=True,
      tie_embeddings=tie,
      model_type="qwen3",
      max_len=40_960,
  )


def _llama3(d, layers, heads, kv, mlp, factor, tie):
  return TransformerConfig(
      vocab_size=128_256,
      d_model=d,
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=kv,
      head_dim=d // heads,
      mlp_dim=mlp,
      rope_theta=500_000.0,
      rope_scaling=RopeScaling(factor=factor),
      norm_eps=1e-5,
      tie_embeddings=tie,
      model_type="llama",
      max_len=131_072,
  )


def _tiny(model_type, **kw):
  base = dict(
      vocab_size=256,
      d_model=64,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
      mlp_dim=128,
      max_len=128,
      model_type=model_type,
  )
  base.update(kw)
  return TransformerConfig(**base)


PRESETS: dict[str, TransformerConfig] = {
    "qwen2.5-0.5b": _qwen25(896, 24, 14, 2, 4864),
    "qwen2.5-1.5b": _qwen25(1536, 28, 12, 2, 8960),
    "qwen2.5-7b": _qwen25(3584, 28, 28, 4, 18944, vocab=152_064, tie=False),
    "qwen3-0.6b": _qwen3(1024, 28, 16, 8, 3072),
    "qwen3-1.7b": _qwen3(2048, 28, 16, 8, 6144),
    "qwen3-8b": _qwen3(4096, 36, 32, 8, 12288, tie=False),
    "llama3.2-1b": _llama3(2048, 16, 32, 8, 8192, 32.0, True),
    "llama3.2-3b": _llama3(3072, 28, 24, 8, 8192, 32.0, True),
    "llama3.1-8b": _llama3(4096, 32, 32, 8, 14336, 8.0, False),
    # CPU sizes for tests and the study.
    "tiny-qwen2": _tiny("qwen2", qkv_bias=True, tie_embeddings=True),
    "tiny-qwen3": _tiny("qwen3", qk_norm=True, head_dim=24),
    "tiny-llama": _tiny(
        "llama",
        rope_theta=500_000.0,
        rope_scaling=RopeScaling(4.0, 1.0, 4.0, 32),
        norm_eps=1e-5,
    ),
}


def get_config(name: str, **overrides: Any) -> TransformerConfig:
  """A named preset with field overrides (e.g. ``vocab_size=64``)."""
  if name not in PRESETS:
    raise ValueError(
        f"unknown model preset {name!r}; available: {sorted(PRESETS)}."
    )
  return PRESETS[name].replace(**overrides)
