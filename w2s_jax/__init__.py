"""w2s_jax: moving reasoning between language models of different strength.

Public API (imported lazily so ``import w2s_jax`` stays cheap)::

  model = w2s_jax.load_pretrained("path/to/hf_dir", dtype="float32")
  logits = model(tokens)                 # int32 [B, L] -> float [B, L, V]
  w2s_jax.save_pretrained(model, "out_dir")
  tok = w2s_jax.load_tokenizer("path/to/hf_dir")
  out = w2s_jax.generate(model, prompts, max_new_tokens=128)
  out = w2s_jax.rsd_generate(teacher, student, prompts, max_new_tokens=128)
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_pretrained": ("w2s_jax.models.hf_io", "load_pretrained"),
    "save_pretrained": ("w2s_jax.models.hf_io", "save_pretrained"),
    "load_tokenizer": ("w2s_jax.data.tokenizers", "load_tokenizer"),
    "generate": ("w2s_jax.decoding", "generate"),
    "rsd_generate": ("w2s_jax.decoding", "rsd_generate"),
    "TransformerConfig": ("w2s_jax.models.config", "TransformerConfig"),
    "get_config": ("w2s_jax.models.config", "get_config"),
    "init_model": ("w2s_jax.models.transformer", "init_model"),
}
_SUBMODULES = ("models", "losses", "decoding", "data", "evals", "sharding")

__all__ = sorted(_LAZY) + list(_SUBMODULES)


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  if name in _SUBMODULES:
    return importlib.import_module(f"w2s_jax.{name}")
  raise AttributeError(f"module 'w2s_jax' has no attribute {name!r}")
