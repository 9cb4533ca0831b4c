"""Hugging Face checkpoints <-> NNX models: config, key map, safetensors I/O.

Loading reads ``config.json`` and single-file or sharded safetensors one
tensor at a time (the host never holds two full copies of the weights), and
places each parameter with its target sharding when a mesh is given. Saving
writes ``config.json`` + (sharded) safetensors that
``transformers.AutoModelForCausalLM.from_pretrained`` reloads to the same
logits. Both config spellings are read: hub checkpoints keep ``rope_theta`` /
``rope_scaling`` / ``torch_dtype`` at the top level, transformers 5 writes
``rope_parameters`` / ``dtype``.

Legend: D d_model, N heads, K kv heads, H head dim, F mlp width, V vocab.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from w2s_jax import sharding
from w2s_jax.models import config as model_config
from w2s_jax.models import transformer

Config = model_config.TransformerConfig
_HF_ARCH = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
}
# Buffers some exporters write that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_NP_DTYPES = {
    "float32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
}


# ----------------------------------------------------------------------------
# config.json <-> TransformerConfig


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> Config:
  """Builds a TransformerConfig from a Hugging Face config dict."""
  model_type = hf.get("model_type")
  if model_type not in model_config.SUPPORTED_MODEL_TYPES:
    raise ValueError(
        f"{source}: model_type {model_type!r} is not supported; supported"
        f" model types: {list(model_config.SUPPORTED_MODEL_TYPES)}."
    )
  try:
    d = int(hf["hidden_size"])
    n = int(hf["num_attention_heads"])
    cfg_kw = dict(
        vocab_size=int(hf["vocab_size"]),
        d_model=d,
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=n,
        num_kv_heads=int(hf.get("num_key_value_heads") or n),
        head_dim=int(hf.get("head_dim") or d // n),
        mlp_dim=int(hf["intermediate_size"]),
    )
  except KeyError as e:
    raise ValueError(f"{source}: required key {e.args[0]!r} is missing.") from e
  rope = dict(hf.get("rope_parameters") or {})
  legacy_scaling = hf.get("rope_scaling") or {}
  theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
  scaling = (
      rope if rope.get("rope_type", "default") != "default" else legacy_scaling
  )
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  rope_scaling = None
  if rope_type == "llama3":
    rope_scaling = model_config.RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(
            scaling["original_max_position_embeddings"]
        ),
    )
  elif rope_type not in ("default", None):
    raise ValueError(
        f"{source}: rope scaling type {rope_type!r} is not supported (only"
        " 'default' and 'llama3')."
    )
  if hf.get("use_sliding_window") and hf.get("sliding_window"):
    raise ValueError(
        f"{source}: use_sliding_window=true is not supported; set it to false"
        " (Qwen2.5 checkpoints ship with it off)."
    )
  if model_type == "qwen2":
    qkv_bias = True
  else:
    qkv_bias = bool(hf.get("attention_bias", False))
  dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  return Config(
      **cfg_kw,
      rope_theta=float(theta),
      rope_scaling=rope_scaling,
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      qkv_bias=qkv_bias,
      qk_norm=model_type == "qwen3",
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      model_type=model_type,
      param_dtype=str(dtype),
      dtype=str(dtype),
      max_len=int(hf.get("max_position_embeddings", 2048)),
  )


def config_to_hf(cfg: Config, dtype: str) -> dict[str, Any]:
  """A config.json dict in the classic (top-level rope_theta) spelling."""
  if cfg.qkv_bias != (cfg.model_type == "qwen2") and cfg.model_type != "llama":
    raise ValueError(
        f"qkv_bias={cfg.qkv_bias} cannot be expressed for model_type"
        f" {cfg.model_type!r} in a Hugging Face config."
    )
  if cfg.qk_norm != (cfg.model_type == "qwen3"):
    raise ValueError(
        f"qk_norm={cfg.qk_norm} cannot be expressed for model_type"
        f" {cfg.model_type!r}; use model_type='qwen3' for qk-norm."
    )
  hf = {
      "architectures": [_HF_ARCH[cfg.model_type]],
      "model_type": cfg.model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "intermediate_size": cfg.mlp_dim,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta,
      "max_position_embeddings": cfg.max_len,
      "tie_word_embeddings": cfg.tie_embeddings,
      "torch_dtype": dtype,
      "attention_dropout": 0.0,
      "use_cache": True,
  }
  if cfg.model_type == "llama":
    hf["attention_bias"] = cfg.qkv_bias
    hf["mlp_bias"] = False
  if cfg.model_type == "qwen3":
    hf["attention_bias"] = False
  if cfg.model_type in ("qwen2", "qwen3"):
    hf["use_sliding_window"] = False
  if cfg.rope_scaling is not None:
    s = cfg.rope_scaling
    hf["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": s.factor,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
        "original_max_position_embeddings": s.original_max_position_embeddings,
    }
  return hf


def read_config(path: str) -> dict[str, Any]:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"checkpoint directory {path!r} does not exist; pass a local Hugging"
        " Face model directory (config.json + *.safetensors)."
    )
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(
        f"{cfg_path} not found: a Hugging Face checkpoint directory needs a"
        " config.json next to its safetensors files."
    )
  try:
    with open(cfg_path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e


# ----------------------------------------------------------------------------
# The key map: one entry per NNX parameter.
#
# Each entry: (nnx path, hf key, to_nnx(np) -> np, to_hf(np) -> np).


def _key_map(
    cfg: Config,
) -> list[tuple[tuple[Any, ...], str, Callable, Callable]]:
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  ident = lambda w: w

  def in_proj(heads):  # HF [heads*H, D] <-> ours [D, heads, H]
    return (
        lambda w: w.reshape(heads, h, d).transpose(2, 0, 1),
        lambda w: w.transpose(1, 2, 0).reshape(heads * h, d),
    )

  def bias(heads):
    return (lambda w: w.reshape(heads, h), lambda w: w.reshape(heads * h))

  out = (  # HF [D, N*H] <-> ours [N, H, D]
      lambda w: w.reshape(d, n, h).transpose(1, 2, 0),
      lambda w: w.transpose(2, 0, 1).reshape(d, n * h),
  )
  linear = (lambda w: w.T, lambda w: w.T)  # HF [out, in] <-> ours [in, out]
  entries = [(("embed_VD",), "model.embed_tokens.weight", ident, ident)]
  for i in range(cfg.num_layers):
    p, b = f"model.layers.{i}.", ("blocks", i)
    entries += [
        (
            b + ("attn_norm", "scale"),
            p + "input_layernorm.weight",
            ident,
            ident,
        ),
        (
            b + ("mlp_norm", "scale"),
            p + "post_attention_layernorm.weight",
            ident,
            ident,
        ),
        (b + ("attn", "q_DNH"), p + "self_attn.q_proj.weight", *in_proj(n)),
        (b + ("attn", "k_DKH"), p + "self_attn.k_proj.weight", *in_proj(k)),
        (b + ("attn", "v_DKH"), p + "self_attn.v_proj.weight", *in_proj(k)),
        (b + ("attn", "o_NHD"), p + "self_attn.o_proj.weight", *out),
        (b + ("mlp", "gate_DF"), p + "mlp.gate_proj.weight", *linear),
        (b + ("mlp", "up_DF"), p + "mlp.up_proj.weight", *linear),
        (b + ("mlp", "down_FD"), p + "mlp.down_proj.weight", *linear),
    ]
    if cfg.qkv_bias:
      entries += [
          (b + ("attn", "q_bias_NH"), p + "self_attn.q_proj.bias", *bias(n)),
          (b + ("attn", "k_bias_KH"), p + "self_attn.k_proj.bias", *bias(k)),
          (b + ("attn", "v_bias_KH"), p + "self_attn.v_proj.bias", *bias(k)),
      ]
    if cfg.qk_norm:
      entries += [
          (
              b + ("attn", "q_norm", "scale"),
              p + "self_attn.q_norm.weight",
              ident,
              ident,
          ),
          (
              b + ("attn", "k_norm", "scale"),
              p + "self_attn.k_norm.weight",
              ident,
              ident,
          ),
      ]
  entries.append((("final_norm", "scale"), "model.norm.weight", ident, ident))
  if not cfg.tie_embeddings:
    entries.append((("lm_head_DV",), "lm_head.weight", *linear))
  return entries


def _stacked_path(
    cfg: Config, nnx_path: tuple[Any, ...]
) -> tuple[tuple[Any, ...], int | None]:
  """Unrolled path ('blocks', i, ...) -> (stacked path, i) under scan_layers."""
  if cfg.scan_layers and nnx_path[0] == "blocks":
    return ("blocks", *nnx_path[2:]), nnx_path[1]
  return nnx_path, None


# ----------------------------------------------------------------------------
# Reading safetensors.


def _weight_files(path: str) -> dict[str, str]:
  """HF key -> safetensors file, from the index or a single file."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(
          f"{index} is not valid JSON ({e}); re-download or re-export the"
          " checkpoint."
      ) from e
    weight_map = (
        weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    )
    if not weight_map or not isinstance(weight_map, dict):
      raise ValueError(
          f"{index} has no 'weight_map' object; re-download or re-export the"
          " checkpoint."
      )
    files = {k: os.path.join(path, v) for k, v in weight_map.items()}
    for key, file in files.items():
      if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{index} maps {key!r} to {file}, which does not exist; the"
            " checkpoint is incomplete (re-download or re-export it)."
        )
    return files
  if os.path.isfile(single):
    with _safe_open(single) as f:
      return {k: single for k in f.keys()}
  found = sorted(os.listdir(path))
  raise FileNotFoundError(
      f"no weights in {path}: expected model.safetensors or"
      f" model.safetensors.index.json (found: {found[:10]})."
  )


def _iter_tensors(
    files: dict[str, str], keys: list[str]
) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (key, array) one tensor at a time, opening each file once."""
  by_file: dict[str, list[str]] = {}
  for k in keys:
    by_file.setdefault(files[k], []).append(k)
  for file, file_keys in by_file.items():
    with _safe_open(file) as f:
      for k in file_keys:
        try:
          tensor = f.get_tensor(k)
        except Exception as e:  # SafetensorError: truncated or corrupt data
          raise _corrupt(file, e) from e
        yield k, tensor


@contextlib.contextmanager
def _safe_open(file: str) -> Iterator[Any]:
  """``safetensors.safe_open`` whose failures name the file (one line)."""
  try:
    handle = safetensors.safe_open(file, "numpy")
  except Exception as e:  # SafetensorError: bad header, truncated file
    raise _corrupt(file, e) from e
  with handle as f:
    yield f


def _corrupt(file: str, e: Exception) -> ValueError:
  reason = " ".join(str(e).split()) or type(e).__name__
  return ValueError(
      f"{file} is not a readable safetensors file ({reason}); it is corrupt"
      " or truncated: re-download or re-export the checkpoint."
  )


def load_pretrained(
    path: str,
    dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    compute_dtype: str | None = None,
    rules: sharding.Rules | None = None,
    **config_overrides: Any,
) -> transformer.Transformer:
  """Loads a local Hugging Face checkpoint directory into an NNX model.

  Args:
    path: directory with config.json and model.safetensors (or a sharded
      model.safetensors.index.json).
    dtype: parameter dtype ('float32', 'bfloat16', 'float16'); default: the
      checkpoint's. bf16 weights load into fp32 on request.
    mesh: when given, each parameter is placed with its sharding from the
      logical-axis rules as soon as it is read.
    compute_dtype: matmul dtype; defaults to ``dtype``.
    rules: logical->mesh rules (default: the active table).
    **config_overrides: TransformerConfig fields to override (e.g. max_len).

  Returns:
    The model, ready to call or to ``nnx.split``.
  """
  hf = read_config(path)
  cfg = config_from_hf(hf, os.path.join(path, "config.json"))
  if dtype is not None:
    model_config.parse_dtype(dtype)
    cfg = cfg.replace(param_dtype=dtype, dtype=compute_dtype or dtype)
  elif compute_dtype is not None:
    cfg = cfg.replace(dtype=compute_dtype)
  cfg = cfg.replace(**config_overrides)
  np_dtype = _NP_DTYPES[
      jnp.dtype(model_config.parse_dtype(cfg.param_dtype)).name
  ]

  abstract = transformer.abstract_model(cfg)
  graphdef, abs_state = nnx.split(abstract)
  shardings = None
  if mesh is not None:
    shardings = sharding.state_shardings(abs_state, mesh, rules)

  files = _weight_files(path)
  entries = _key_map(cfg)
  expected = {e[1] for e in entries}
  present = set(files)
  missing = sorted(expected - present)
  if missing:
    raise ValueError(
        f"checkpoint {path} is missing {len(missing)} tensor(s) that a"
        f" {cfg.model_type} config with {cfg.num_layers} layers needs, e.g."
        f" {missing[:5]}; check that config.json matches the weights."
    )
  extra = sorted(
      k
      for k in present - expected
      if not k.endswith(_IGNORED_SUFFIXES)
      and not (cfg.tie_embeddings and k == "lm_head.weight")
  )
  if extra:
    raise ValueError(
        f"checkpoint {path} has {len(extra)} tensor(s) this architecture does"
        f" not use, e.g. {extra[:5]}; the config.json (model_type, layers,"
        " attention_bias, tie_word_embeddings) disagrees with the weights."
    )

  by_key = {e[1]: e for e in entries}
  abs_flat = dict(nnx.to_flat_state(abs_state))
  shard_flat = (
      dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
  )
  values = {}
  stacks: dict[tuple[Any, ...], np.ndarray] = {}  # scan_layers: host buffers
  filled: dict[tuple[Any, ...], int] = {}
  for key, hf_array in _iter_tensors(files, sorted(expected)):
    nnx_path, _, to_nnx, _ = by_key[key]
    path, layer = _stacked_path(cfg, nnx_path)
    target = abs_flat[path]
    full = tuple(target.get_value().shape)
    want = full if layer is None else full[1:]
    try:
      arr = to_nnx(hf_array)
    except ValueError:
      arr = None
    if arr is None or tuple(arr.shape) != want:
      raise ValueError(
          f"tensor {key!r} in {files[key]} has shape {tuple(hf_array.shape)},"
          f" which does not fit parameter {'/'.join(map(str, nnx_path))} of"
          f" shape {want} implied by config.json; the config and the weights"
          " disagree."
      )
    arr = arr.astype(np_dtype)
    del hf_array
    if layer is not None:  # fill the stacked buffer; placed when complete
      if path not in stacks:
        stacks[path] = np.empty(full, np_dtype)
      stacks[path][layer] = arr
      filled[path] = filled.get(path, 0) + 1
      if filled[path] < cfg.num_layers:
        continue
      arr = stacks.pop(path)
    if mesh is not None:
      sh = shard_flat[path].get_value()
      value = jax.make_array_from_callback(full, sh, lambda idx, a=arr: a[idx])
    else:
      value = jnp.asarray(arr)
    values[path] = value
    del arr  # keep at most one host copy alive

  flat = [(p, v.replace(values[p])) for p, v in abs_flat.items()]
  state = nnx.from_flat_state(flat)
  return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------
# Saving.


def save_pretrained(
    model: transformer.Transformer,
    path: str,
    dtype: str | None = None,
    max_shard_bytes: int = 4 * 1024**3,
) -> None:
  """Writes config.json + safetensors loadable by transformers.

  The directory is written to a temporary sibling and renamed into place, so
  an interrupted export never leaves a half-written checkpoint at ``path``
  (an existing directory at ``path`` is replaced only after success).

  Args:
    model: the NNX model.
    path: output directory.
    dtype: dtype of the saved tensors; default: the model's parameter dtype.
    max_shard_bytes: split into model-0000x-of-0000n.safetensors files with an
      index when the weights exceed this size.
  """
  cfg = model.cfg
  dtype = dtype or cfg.param_dtype
  np_dtype = _NP_DTYPES[jnp.dtype(model_config.parse_dtype(dtype)).name]
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  tensors: dict[str, np.ndarray] = {}
  for nnx_path, key, _, to_hf in _key_map(cfg):
    spath, layer = _stacked_path(cfg, nnx_path)
    value = flat[spath].get_value()
    if layer is not None:
      value = value[layer]
    value = np.asarray(jax.device_get(value))
    tensors[key] = np.ascontiguousarray(to_hf(value).astype(np_dtype))

  parent = os.path.dirname(os.path.abspath(path)) or "."
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp_export_", dir=parent)
  try:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, arr in tensors.items():
      if shards[-1] and size + arr.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][key] = arr
      size += arr.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
      safetensors.numpy.save_file(
          shards[0], os.path.join(tmp, "model.safetensors"), metadata=meta
      )
    else:
      weight_map = {}
      total = len(shards)
      for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        safetensors.numpy.save_file(
            shard, os.path.join(tmp, name), metadata=meta
        )
        weight_map.update({k: name for k in shard})
      index = {
          "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
          "weight_map": weight_map,
      }
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config_to_hf(cfg, dtype), f, indent=2)
    if os.path.exists(path):
      old = path + ".old"
      shutil.rmtree(old, ignore_errors=True)
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
