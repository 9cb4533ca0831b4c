"""Presets reproduce the published parameter counts; configs validate."""

import pytest

from w2s_jax import models
from w2s_jax.models import config as model_config

# Parameter counts published on the model cards (total, in billions).
PUBLISHED = {
    "qwen2.5-0.5b": 0.49,
    "qwen2.5-1.5b": 1.54,
    "qwen2.5-7b": 7.61,
    "qwen3-8b": 8.19,
    "llama3.2-1b": 1.24,
    "llama3.2-3b": 3.21,
    "llama3.1-8b": 8.03,
}


@pytest.mark.parametrize("name,billions", sorted(PUBLISHED.items()))
def test_preset_parameter_counts(name, billions):
  n = models.get_config(name).num_params() / 1e9
  assert abs(n - billions) / billions < 0.01, (name, n)


def test_preset_counts_match_instantiated_tiny_model():
  import jax
  from flax import nnx

  for name in ("tiny-qwen2", "tiny-qwen3", "tiny-llama"):
    cfg = models.get_config(name)
    state = nnx.state(models.abstract_model(cfg), nnx.Param)
    n = sum(x.size for x in jax.tree.leaves(state))
    assert n == cfg.num_params(), name


def test_unknown_preset():
  with pytest.raises(
      ValueError, match=r"unknown model preset 'qwen9'.*available"
  ):
    models.get_config("qwen9")


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(num_heads=6, num_kv_heads=4), r"multiple of num_kv_heads"),
        (dict(head_dim=7), r"must be even"),
        (dict(d_model=0), r"d_model must be positive"),
        (dict(dtype="fp4"), r"unknown dtype 'fp4'"),
        (dict(remat="all"), r"remat 'all'"),
        (dict(model_type="gpt2"), r"'gpt2' is not supported"),
    ],
)
def test_invalid_config(kw, msg):
  with pytest.raises(ValueError, match=msg):
    models.get_config("tiny-qwen2", **kw)


def test_config_lib_model_keys_agree_and_are_validated():
  from w2s_jax import config_lib  # pylint: disable=g-import-not-at-top

  assert set(config_lib._REMAT) == {"", *model_config.REMAT_POLICIES}
  assert set(config_lib._ATTENTION) == {"", *model_config.ATTENTION_BACKENDS}
  assert set(config_lib._PRECISION) == set(model_config.MATMUL_PRECISIONS)
  base = config_lib.train_config("sft")
  assert base.student.overrides.scan_layers is False
  for key, bad in (
      ("attention", "flash"),
      ("matmul_precision", "tf32"),
      ("remat", "full"),
  ):
    cfg = config_lib.train_config("sft")
    cfg.student.overrides[key] = bad
    with pytest.raises(ValueError, match=f"student.overrides.{key}="):
      config_lib.validate(cfg)
