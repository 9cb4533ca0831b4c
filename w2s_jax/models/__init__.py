"""Models: config presets, the NNX transformer, KV cache and HF I/O."""

from w2s_jax.models.config import (
    PRESETS,
    RopeScaling,
    TransformerConfig,
    get_config,
)
from w2s_jax.models.hf_io import load_pretrained, save_pretrained
from w2s_jax.models.kv_cache import Cache, init_cache
from w2s_jax.models.transformer import Transformer, abstract_model, init_model

__all__ = [
    "PRESETS",
    "Cache",
    "RopeScaling",
    "Transformer",
    "TransformerConfig",
    "abstract_model",
    "get_config",
    "init_cache",
    "init_model",
    "load_pretrained",
    "save_pretrained",
]
