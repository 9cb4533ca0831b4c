"""Every user-facing checkpoint load error is one line naming the file."""

import os
import shutil

import pytest

from w2s_jax import models


@pytest.fixture(scope="module")
def export_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  model = models.init_model(models.get_config("tiny-qwen2"), seed=3)
  single, sharded = str(root / "single"), str(root / "sharded")
  models.save_pretrained(model, single)
  models.save_pretrained(model, sharded, max_shard_bytes=40_000)
  return single, sharded


def _copy(src, tmp_path):
  dst = str(tmp_path / "ckpt")
  shutil.copytree(src, dst)
  return dst


def _one_line_naming(e, path):
  msg = str(e.value)
  assert "\n" not in msg and path in msg, msg
  return msg


@pytest.mark.parametrize("keep", [0.5, 0.999])  # into the data / the header
def test_truncated_safetensors(tmp_path, export_dirs, keep):
  d = _copy(export_dirs[0], tmp_path)
  path = os.path.join(d, "model.safetensors")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(int(size * keep))
  with pytest.raises(ValueError) as e:
    models.load_pretrained(d)
  assert "corrupt or truncated" in _one_line_naming(e, path)


def test_garbage_safetensors_header(tmp_path, export_dirs):
  d = _copy(export_dirs[0], tmp_path)
  path = os.path.join(d, "model.safetensors")
  with open(path, "r+b") as f:
    f.write(b"\xff" * 16)
  with pytest.raises(ValueError) as e:
    models.load_pretrained(d)
  _one_line_naming(e, path)


def test_truncated_shard_of_a_sharded_checkpoint(tmp_path, export_dirs):
  d = _copy(export_dirs[1], tmp_path)
  shard = sorted(f for f in os.listdir(d) if f.startswith("model-"))[-1]
  path = os.path.join(d, shard)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError) as e:
    models.load_pretrained(d)
  _one_line_naming(e, path)


@pytest.mark.parametrize(
    "text,msg",
    [
        ('{"weight_map": {"a": ', "is not valid JSON"),
        ('{"metadata": {}}', "has no 'weight_map'"),
        ("[1, 2]", "has no 'weight_map'"),
    ],
)
def test_bad_index(tmp_path, export_dirs, text, msg):
  d = _copy(export_dirs[1], tmp_path)
  path = os.path.join(d, "model.safetensors.index.json")
  with open(path, "w") as f:
    f.write(text)
  with pytest.raises(ValueError) as e:
    models.load_pretrained(d)
  assert msg in _one_line_naming(e, path)


def test_bad_config_json(tmp_path, export_dirs):
  d = _copy(export_dirs[0], tmp_path)
  path = os.path.join(d, "config.json")
  with open(path, "wb") as f:
    f.write(b"\xff\xfe{")
  with pytest.raises(ValueError) as e:
    models.load_pretrained(d)
  _one_line_naming(e, path)
