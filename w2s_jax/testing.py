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


def rl_batch(
    group: int, prompts: int, prompt_len: int, new_tokens: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """A hand-made RL batch of ``group * prompts`` rows (vocab ids 4..23):
  ragged left-padded prompts, ragged completions, binary rewards with
  ``rewards [prompts, group]``, ``correct``, no injected rows, β_KD 0."""
  from w2s_jax.rl import rollouts  # noqa: PLC0415

  rng = np.random.default_rng(seed)
  b = group * prompts
  p_len = rng.integers(1, prompt_len + 1, size=b)
  c_len = rng.integers(1, new_tokens + 1, size=b)
  prompt = np.zeros((b, prompt_len), np.int32)
  seg = np.zeros((b, prompt_len), np.int32)
  for i, k in enumerate(p_len):
    prompt[i, prompt_len - k :] = rng.integers(4, 24, size=k)
    seg[i, prompt_len - k :] = 1
  comp = rng.integers(4, 24, size=(b, new_tokens)).astype(np.int32)
  batch = rollouts._assemble(prompt, seg, comp, c_len)  # noqa: SLF001
  rewards = rng.integers(0, 2, size=(prompts, group)).astype(np.float32)
  batch["rewards"] = rewards
  batch["correct"] = rewards.reshape(b)
  batch["off_policy"] = np.zeros(b, np.float32)
  batch["kd_beta"] = np.zeros(b, np.float32)
  return batch


def np_token_logprobs(model, batch: dict[str, np.ndarray]) -> np.ndarray:
  """[B, L-1] float64 log-probs of ``tokens[:, 1:]`` from the model's logits
  (an independent reference for the scoring and the RL losses)."""
  logits = np.asarray(
      model(
          jax.numpy.asarray(batch["tokens"]),
          jax.numpy.asarray(batch["positions"]),
          jax.numpy.asarray(batch["segment_ids"]),
      ),
      np.float64,
  )[:, :-1]
  z = logits - logits.max(-1, keepdims=True)
  lp = z - np.log(np.exp(z).sum(-1))[..., None]
  return np.take_along_axis(lp, batch["tokens"][:, 1:, None], -1)[..., 0]


def method_loss_and_grads(
    spec, model, batch, hp, frozen=None, norm_batch=None
) -> tuple[Any, dict[str, Any], Any]:
  """(loss, metrics, grads) of a method's loss on one micro-batch ``batch``
  with the step-global normalisers of ``norm_batch`` (default: itself);
  ``batch['rewards']`` is left out (host only)."""
  from flax import nnx  # noqa: PLC0415

  def device(b):
    return {k: jax.numpy.asarray(v) for k, v in b.items() if k != "rewards"}

  graphdef, state = nnx.split(model)
  mb = device(batch)
  nb = mb if norm_batch is None else device(norm_batch)
  norms = spec.normalizers(jax.tree.map(lambda x: x[None], nb), hp)

  def f(s):
    return spec.loss(nnx.merge(graphdef, s), frozen or {}, mb, norms, hp)

  (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(state)
  return loss, metrics, g


def flat(tree: Any) -> np.ndarray:
  """Every leaf of ``tree`` raveled into one vector."""
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def rl_model(seed: int = 0, d: int = 32, layers: int = 1):
  """A tiny random tiny-qwen2 (vocab 24) for the RL loss tests."""
  from w2s_jax.models import config as model_config  # noqa: PLC0415
  from w2s_jax.models import transformer  # noqa: PLC0415

  cfg = model_config.get_config(
      "tiny-qwen2", d_model=d, num_layers=layers, mlp_dim=64, vocab_size=24
  )
  return transformer.init_model(cfg, seed=seed)


def np_group_advantages(
    rewards_NG: np.ndarray, std: bool = True, eps: float = 1e-6
) -> np.ndarray:
  """[N, G] float64 group-relative advantages (docs/methods.md, "GRPO")."""
  r = np.asarray(rewards_NG, np.float64)
  a = r - r.mean(-1, keepdims=True)
  if std:
    a = a / (r.std(-1, ddof=1, keepdims=True) + eps)
  return a
