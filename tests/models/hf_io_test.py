"""Hugging Face checkpoint I/O: round trips, both config spellings, errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from w2s_jax import models, sharding, testing
from w2s_jax.models import hf_io


def _tokens(vocab, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, (2, 12))


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
  hf = testing.make_hf_model("qwen2")
  return (
      testing.save_hf_model(hf, str(tmp_path_factory.mktemp("q2") / "ckpt")),
      hf,
  )


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-qwen3", "tiny-llama"])
def test_export_reloads_in_transformers_with_same_logits(tmp_path, preset):
  import torch
  import transformers

  model = models.init_model(models.get_config(preset), seed=5)
  out = str(tmp_path / "export")
  models.save_pretrained(model, out)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      out, dtype=torch.float32
  )
  tokens = _tokens(model.cfg.vocab_size)
  ref = testing.hf_logits(hf, tokens)
  assert np.abs(np.asarray(model(jnp.asarray(tokens))) - ref).max() <= 1e-4
  # And back into w2s_jax, bit-identical parameters.
  again = models.load_pretrained(out)
  testing.assert_trees_close(
      nnx.state(model, nnx.Param), nnx.state(again, nnx.Param), atol=0, rtol=0
  )


def test_sharded_safetensors_round_trip(tmp_path):
  model = models.init_model(models.get_config("tiny-llama"), seed=6)
  out = str(tmp_path / "sharded")
  models.save_pretrained(model, out, max_shard_bytes=40_000)
  files = sorted(os.listdir(out))
  assert "model.safetensors.index.json" in files
  assert sum(f.endswith(".safetensors") for f in files) > 2
  again = models.load_pretrained(out)
  tokens = jnp.asarray(_tokens(model.cfg.vocab_size))
  np.testing.assert_array_equal(
      np.asarray(model(tokens)), np.asarray(again(tokens))
  )


def test_reads_both_config_spellings(tmp_path):
  """Hub-style (rope_theta/rope_scaling/torch_dtype) and transformers-5 style."""
  hf = testing.make_hf_model("llama")
  path = testing.save_hf_model(hf, str(tmp_path / "llama"))
  with open(os.path.join(path, "config.json")) as f:
    written = json.load(f)
  cfg_new = hf_io.config_from_hf(written)
  legacy = {
      k: v for k, v in written.items() if k not in ("rope_parameters", "dtype")
  }
  legacy["rope_theta"] = 500_000.0
  legacy["torch_dtype"] = "float32"
  legacy["rope_scaling"] = {
      "rope_type": "llama3",
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 32,
  }
  cfg_old = hf_io.config_from_hf(legacy)
  assert cfg_new == cfg_old
  assert cfg_old.rope_scaling == models.RopeScaling(8.0, 1.0, 4.0, 32)
  assert cfg_old.rope_theta == 500_000.0


def test_load_with_mesh_places_shards(qwen2_dir):
  path, hf = qwen2_dir
  mesh = sharding.make_mesh((1, 2, 4))
  model = models.load_pretrained(path, mesh=mesh)
  embed = model.embed_VD.get_value()
  assert embed.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  tokens = _tokens(hf.config.vocab_size)
  with jax.set_mesh(mesh):
    out = np.asarray(jax.jit(lambda t: model(t))(jnp.asarray(tokens)))
  assert np.abs(out - testing.hf_logits(hf, tokens)).max() <= 1e-4


def test_unknown_dtype_string(qwen2_dir):
  with pytest.raises(ValueError, match=r"unknown dtype 'fp8'.*bfloat16"):
    models.load_pretrained(qwen2_dir[0], dtype="fp8")


def test_missing_config(tmp_path):
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"config.json not found"):
    models.load_pretrained(str(tmp_path))


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist"):
    models.load_pretrained(str(tmp_path / "nope"))


def test_missing_weights(tmp_path, qwen2_dir):
  os.makedirs(tmp_path / "c")
  with open(os.path.join(qwen2_dir[0], "config.json")) as f:
    (tmp_path / "c" / "config.json").write_text(f.read())
  with pytest.raises(FileNotFoundError, match=r"expected model.safetensors"):
    models.load_pretrained(str(tmp_path / "c"))


def test_unsupported_architecture(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(
      ValueError, match=r"'gpt2' is not supported.*qwen2.*qwen3.*llama"
  ):
    models.load_pretrained(str(tmp_path))


def _rewrite(src, dst, edit):
  os.makedirs(dst)
  with open(os.path.join(src, "config.json")) as f:
    (dst / "config.json").write_text(f.read())
  tensors = safetensors.numpy.load_file(os.path.join(src, "model.safetensors"))
  edit(tensors)
  safetensors.numpy.save_file(tensors, str(dst / "model.safetensors"))
  return str(dst)


def test_missing_tensor(tmp_path, qwen2_dir):
  path = _rewrite(
      qwen2_dir[0],
      tmp_path / "m",
      lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
  )
  with pytest.raises(
      ValueError, match=r"missing 1 tensor.*layers.1.mlp.up_proj"
  ):
    models.load_pretrained(path)


def test_extra_tensor(tmp_path, qwen2_dir):
  def add(t):
    t["model.layers.2.mlp.up_proj.weight"] = np.zeros((2, 2), np.float32)

  path = _rewrite(qwen2_dir[0], tmp_path / "x", add)
  with pytest.raises(ValueError, match=r"does\s+not use.*layers.2.mlp.up_proj"):
    models.load_pretrained(path)


def test_shape_mismatch(tmp_path, qwen2_dir):
  def cut(t):
    key = "model.layers.0.self_attn.k_proj.weight"
    t[key] = t[key][:-1]

  path = _rewrite(qwen2_dir[0], tmp_path / "s", cut)
  with pytest.raises(
      ValueError, match=r"k_proj.weight.*shape \(31, 64\).*config"
  ):
    models.load_pretrained(path)


def test_failed_export_keeps_existing_checkpoint(tmp_path):
  model = models.init_model(models.get_config("tiny-qwen2"))
  out = str(tmp_path / "keep")
  models.save_pretrained(model, out)
  before = sorted(os.listdir(out))
  with pytest.raises(ValueError, match=r"unknown dtype"):
    models.save_pretrained(model, out, dtype="int3")
  assert sorted(os.listdir(out)) == before
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp_export")]
  models.load_pretrained(out)
