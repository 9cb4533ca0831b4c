"""Tokenizer agreement of paired models, the same in every job."""

import os

import numpy as np
import pytest

from w2s_jax import config_lib
from w2s_jax.data import char_vocab
from w2s_jax.data import tokenizers as tokenizers_lib
from w2s_jax.jobs import sampling
from w2s_jax.training import pairing, trainer

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def _cfg(spec, **over):
  cfg = config_lib.load(os.path.join(ROOT, spec))
  for role in ("student", "teacher"):
    if role in cfg and "overrides" in cfg[role]:
      ov = cfg[role].overrides
      ov.d_model, ov.num_layers, ov.mlp_dim = 32, 1, 64
  if "train" in cfg:
    cfg.train.tensorboard = False
  config_lib.set_keys(cfg, over)
  return cfg


@pytest.fixture
def tok(tmp_path):
  path = char_vocab.save_char_tokenizer(str(tmp_path / "tok"))
  return tokenizers_lib.load_tokenizer(path)


def test_padded_widths_slice_to_the_tokenizer(tok):
  cfg = _cfg("configs/distill.py:runlocal")
  v = tok.vocab_size
  assert pairing.shared_vocab(cfg, tok, {"student": v, "teacher": v}) is None
  assert pairing.shared_vocab(cfg, tok, {"student": v, "teacher": v + 128}) == v
  assert pairing.shared_vocab(cfg, tok, {"teacher": v + 8}) == v
  cfg.loss.vocab_size = v + 4  # an explicit width must fit every model
  with pytest.raises(ValueError, match=rf"loss.vocab_size={v + 4} exceeds"):
    pairing.shared_vocab(cfg, tok, {"student": v, "teacher": v + 8})


def test_a_narrow_model_is_refused_naming_widths_keys_and_tokenizer(tok):
  cfg = _cfg(
      "configs/distill.py:runlocal",
      **{"teacher.overrides.vocab_size": 8, "data.tokenizer": "/t/tok"},
  )
  v = tok.vocab_size
  with pytest.raises(ValueError) as e:
    pairing.shared_vocab(cfg, tok, {"student": v, "teacher": 8})
  msg = str(e.value)
  assert f"student has {v} (student.preset=" in msg
  assert "teacher has 8 (teacher.overrides.vocab_size=8)" in msg
  assert f"data.tokenizer=/t/tok ({tok.source}) has {v} tokens" in msg
  assert "w_s_DV" not in msg


def test_role_tokenizer_mismatch_names_both_keys_and_paths(tok, tmp_path):
  other = str(
      char_vocab.save_char_tokenizer(
          str(tmp_path / "other"), alphabet="xyz0123456789"
      )
  )
  cfg = _cfg("configs/sample.py:rsd", **{"student.tokenizer": other})
  with pytest.raises(ValueError) as e:
    pairing.check_tokenizers(cfg, tok, ("teacher", "student"), str(tmp_path))
  msg = str(e.value)
  assert msg.startswith(f"student.tokenizer={other} (")
  assert "does not match data.tokenizer=" in msg and tok.source in msg
  pairing.check_tokenizers(  # the same files: agreement
      cfg, tok, ("teacher",), str(tmp_path)
  )


def test_sample_job_checks_teacher_tokenizer_before_building(tmp_path):
  other = str(
      char_vocab.save_char_tokenizer(
          str(tmp_path / "other"), alphabet="xyz0123456789"
      )
  )
  cfg = _cfg(
      "configs/sample.py:runlocal",
      **{"teacher.hf_path": "/nonexistent", "teacher.tokenizer": other},
  )
  cfg.data.tokenizer = "char"
  # The tokenizer check fails before the (missing) teacher is loaded.
  with pytest.raises(ValueError, match=r"^teacher.tokenizer=.*does not match"):
    sampling.run_sample(cfg, str(tmp_path / "w"), rsd=False)


@pytest.mark.slow  # ~45 s of CPU: two distillation runs
def test_distill_with_a_padded_teacher_slices_automatically(tmp_path):
  over = {
      "train.steps": 2,
      "train.export": False,
      "teacher.overrides.vocab_size": 64,  # > the char tokenizer's size
  }
  auto = trainer.train_and_evaluate(
      _cfg("configs/distill.py:runlocal", **over), str(tmp_path / "a")
  )
  size = tokenizers_lib.load_tokenizer(str(tmp_path / "a" / "tokenizer"))
  explicit = trainer.train_and_evaluate(
      _cfg(
          "configs/distill.py:runlocal",
          **over,
          **{"loss.vocab_size": size.vocab_size},
      ),
      str(tmp_path / "b"),
  )
  assert size.vocab_size < 64
  for k in ("train/loss", "train/param_norm"):
    np.testing.assert_allclose(auto[k], explicit[k], rtol=1e-6, err_msg=k)
