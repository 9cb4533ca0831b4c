"""Tests for w2s_jax.data.tfds_builders (array_record, no TensorFlow)."""

import os
import pathlib
import re
import sys

import pytest
import tensorflow_datasets as tfds

from w2s_jax.data import jsonl_builder as JB
from w2s_jax.data import synthetic as S
from w2s_jax.data import tfds_builders as TB

tfds.disable_progress_bar()

KNOBS = dict(num_train=40, num_test=15, styles=("terse", "verbose"))


def _evaluate(spec: str) -> int:
  """Python arithmetic on a problem spec ``m:expr|...``, left to right."""
  modulus, rest = spec.split(":")
  tokens = re.findall(r"\d+|[-+*]", rest.split("|")[0])
  expr = tokens[0]
  for op, arg in zip(tokens[1::2], tokens[2::2], strict=True):
    expr = f"({expr}{op}{arg})"
  return eval(expr) % int(modulus)  # noqa: S307 - digits and operators only


def test_no_tensorflow_needed(tmp_path):
  builder = TB.prepare_synthetic(tmp_path, num_train=5, num_test=5)
  assert len(TB.load_split(builder, "train")) == 5
  # tfds imports TensorFlow lazily; the array_record path never asks for it.
  assert "tensorflow" not in sys.modules


def test_synthetic_roundtrip_equals_generator(tmp_path):
  builder = TB.prepare_synthetic(tmp_path, **KNOBS)
  files = os.listdir(builder.data_dir)
  assert any(".array_record-" in f for f in files)
  config = builder.builder_config
  for split, n in (("train", 40), ("test", 15)):
    rows = list(TB.load_split(builder, split))
    expected = list(S.make_records(config.task, split, n, styles=config.styles))
    assert rows == expected  # same order, same values, plain Python types
    for row in rows:
      assert row["answer"] == _evaluate(row["spec"])
      assert isinstance(row["answer"], int) and isinstance(row["correct"], bool)
  train = {r["spec"].split("|")[0] for r in TB.load_split(builder, "train")}
  test = {r["spec"].split("|")[0] for r in TB.load_split(builder, "test")}
  assert not train & test
  with pytest.raises(ValueError, match=r"split='pretrain'.*available"):
    TB.load_split(builder, "pretrain")


def test_corpora_and_weak_teacher_splits(tmp_path):
  builder = TB.prepare_synthetic(
      tmp_path,
      num_train=200,
      num_test=20,
      num_pretrain=30,
      num_fact_lines=5,
      fact_error_rate=0.5,
      slip_prob=0.1,
      error_seed=3,
  )
  train = TB.load_split(builder, "train")
  for row in train:
    p = S.Problem.from_spec(row["spec"])
    assert row["correct"] == S.grade(p, row["solution"], "terse")
    assert S.answer_of(row["solution"], "terse") is not None
  n_wrong = sum(not r["correct"] for r in train)
  assert 0.3 * len(train) < n_wrong < len(train)  # weak, not broken
  # Test and pretrain stay gold.
  for split in ("test", "pretrain"):
    for row in TB.load_split(builder, split):
      assert row["correct"] and row["answer"] == _evaluate(row["spec"])
  pretrain = TB.load_split(builder, "pretrain")
  assert len(pretrain) == 30
  assert all(r["question"].startswith("c:") for r in pretrain)
  assert all(
      S.grade(S.Problem.from_spec(r["spec"]), r["solution"], "latent")
      for r in pretrain
  )
  facts = TB.load_split(builder, "facts")
  assert len(facts) == 5 and all(r["style"] == "facts" for r in facts)


def test_config_naming(tmp_path):
  a = TB.SyntheticConfig.make(num_train=10)
  b = TB.SyntheticConfig.make(num_train=10)
  c = TB.SyntheticConfig.make(num_train=11)
  assert a.name == b.name != c.name
  assert a.name.startswith("m11_k2_d0_s0_")
  assert TB.SyntheticConfig.make(name="mine", seed=2).name == "mine"
  builder = TB.W2sSynthetic(data_dir=tmp_path, num_train=10)
  assert builder.builder_config.name == a.name
  default = TB.W2sSynthetic(data_dir=tmp_path)
  assert default.builder_config.name == "default"
  assert default.builder_config.num_train == 2000


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(colour=1), ValueError, "Unknown synthetic knob"),
        (dict(styles=("fancy",)), ValueError, "unknown style 'fancy'"),
        (dict(modulus=1), ValueError, "modulus=1"),
        (dict(num_test=-1), ValueError, "num_test=-1"),
        (dict(slip_prob=2.0), ValueError, "slip_prob=2.0"),
        (dict(config="default", seed=1), ValueError, "not both"),
    ],
)
def test_synthetic_bad_knobs(tmp_path, kwargs, error, match):
  with pytest.raises(error, match=match):
    TB.W2sSynthetic(data_dir=tmp_path, **kwargs)


def test_too_many_problems_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="ask for fewer or raise steps/modulus"):
    TB.prepare_synthetic(tmp_path, modulus=3, steps=1, ops="+", num_test=9)


def test_read_back_paths_and_grain(tmp_path):
  builder = TB.prepare_synthetic(tmp_path, **KNOBS)
  by_builder = TB.load_split(builder, "test")
  by_dir = TB.load_split(pathlib.Path(builder.data_dir), "test")
  by_name = TB.load_split(
      f"w2s_synthetic/{builder.builder_config.name}", "test", data_dir=tmp_path
  )
  assert list(by_builder) == list(by_dir) == list(by_name)
  assert by_builder[-1] == by_builder[len(by_builder) - 1]
  assert by_builder[2:5] == list(by_builder)[2:5]
  assert len(TB.load_split(builder, "test[:10]")) == 10
  with pytest.raises(IndexError):
    by_builder[len(by_builder)]
  grain = pytest.importorskip("grain")
  ds = grain.MapDataset.source(by_builder)
  assert len(ds) == len(by_builder) and ds[3] == by_builder[3]


def test_load_split_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared"):
    TB.load_split(TB.W2sSynthetic(data_dir=tmp_path, seed=9), "train")
  with pytest.raises(FileNotFoundError, match="no dataset_info.json"):
    TB.load_split(tmp_path, "train")


def test_jsonl_names_stay_importable_from_tfds_builders():
  names = (
      "FILE_FORMAT", "GSM8K", "MATH500", "PREFERENCE", "SFT", "Field",
      "JsonlConfig", "JsonlSchemaError", "W2sJsonl", "parse_jsonl_line",
  )  # fmt: skip
  for name in names:
    assert getattr(TB, name) is getattr(JB, name), name
    assert name in TB.__all__, name
  assert all(hasattr(TB, name) for name in TB.__all__)
