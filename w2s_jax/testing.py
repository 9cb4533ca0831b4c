"""Test helpers: tiny Hugging Face checkpoints built locally, tree asserts.

``transformers``/``torch`` are imported lazily here: they belong to the
``test`` extra and are never needed at runtime.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

# Shapes of the tiny parity models: (model_type, extra HF config kwargs).
TINY_HF = {
    "qwen2": dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        max_position_embeddings=128,
    ),
    "qwen3": dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=24,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        max_position_embeddings=128,
    ),
    "llama": dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        rope_theta=500_000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
        tie_word_embeddings=False,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
    ),
}


def make_hf_model(model_type: str, seed: int = 0, **overrides: Any):
  """A random transformers causal LM of a tiny shape (torch, fp32)."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  cls = {
      "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
      "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
  }[model_type]
  kw = dict(TINY_HF[model_type])
  kw.update(overrides)
  torch.manual_seed(seed)
  config = cls[0](**kw)
  model = cls[1](config).eval()
  # Random (not default-init) norms and biases, so a mapping bug shows up.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  return model


def save_hf_model(model, path: str, dtype: str | None = None) -> str:
  """Saves a transformers model to ``path`` (optionally cast) and returns it."""
  import torch  # noqa: PLC0415

  if dtype is not None:
    model = model.to(getattr(torch, dtype))
  model.save_pretrained(path)
  return os.fspath(path)


def hf_logits(
    model, tokens: np.ndarray, attention_mask: np.ndarray | None = None
):
  """fp32 logits of a transformers model as numpy."""
  import torch  # noqa: PLC0415

  with torch.no_grad():
    kw = {}
    if attention_mask is not None:
      kw["attention_mask"] = torch.tensor(np.asarray(attention_mask))
    out = model(torch.tensor(np.asarray(tokens), dtype=torch.long), **kw)
  return out.logits.float().numpy()


def assert_trees_close(a: Any, b: Any, atol: float = 1e-6, rtol: float = 1e-6):
  """Asserts two pytrees have equal structure and close leaves."""
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb, f"tree structures differ:\n{ta}\n{tb}"
  for x, y in zip(la, lb):
    np.testing.assert_allclose(
        np.asarray(x, np.float64),
        np.asarray(y, np.float64),
        atol=atol,
        rtol=rtol,
    )


def load_export(workdir: str) -> dict[str, np.ndarray]:
  """All tensors of ``workdir/export`` (single-file or sharded safetensors)."""
  from safetensors.numpy import load_file  # noqa: PLC0415

  d = os.path.join(workdir, "export")
  files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no safetensors in {d}: {os.listdir(d)}")
  out = {}
  for f in files:
    out.update(load_file(os.path.join(d, f)))
  return out
