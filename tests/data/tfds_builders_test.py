"""Tests for w2s_jax.data.tfds_builders (array_record, no TensorFlow)."""

import json
import os
import pathlib
import re
import sys

import pytest
import tensorflow_datasets as tfds

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


# --------------------------------------------------------------------- JSONL


def _write(path: pathlib.Path, lines: list) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  data = b"".join(
      (x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n"
      for x in lines
  )
  path.write_bytes(data)
  return path


def test_gsm8k_layout_keeps_file_order(tmp_path):
  src = tmp_path / "src"
  rows = [
      {"question": f"q{i}", "answer": f"a\n#### {i}", "source": "x"}
      for i in range(12)
  ]
  _write(src / "train.jsonl", rows[:9] + [b"   "])  # trailing blank line
  _write(src / "test.jsonl", rows[9:])
  builder = TB.prepare_jsonl(tmp_path / "data", "gsm8k", src)
  train = TB.load_split(builder, "train")
  assert [r["question"] for r in train] == [f"q{i}" for i in range(9)]
  assert train[0] == {
      "question": "q0",
      "answer": "a\n#### 0",
      "id": "train.jsonl:1",
      "extra": '{"source": "x"}',
  }
  assert len(TB.load_split(builder, "test")) == 3


def test_sft_tristate_correct(tmp_path):
  src = _write(
      tmp_path / "src" / "train.jsonl",
      [
          {"prompt": "p", "completion": "c", "correct": True},
          {"prompt": "p", "completion": "c", "correct": False},
          {"prompt": "p", "completion": "c", "correct": None},
          {"prompt": "p", "completion": "c"},
      ],
  ).parent
  builder = TB.prepare_jsonl(tmp_path / "data", "sft", src)
  got = [r["correct"] for r in TB.load_split(builder.data_dir, "train")]
  assert got == [True, False, None, None]


@pytest.mark.parametrize(
    "bad,match",
    [
        (b"{not json", r"train.jsonl:2: malformed JSON"),
        (
            b'{"prompt": "p", "completion": "c\xff"}',
            r"train.jsonl:2: not valid UTF-8",
        ),
        (b'["p", "c"]', r"train.jsonl:2: expected a JSON object, got list"),
        (b'{"prompt": "p"}', r"train.jsonl:2: missing field 'completion'"),
        (
            b'{"prompt": " ", "completion": "c"}',
            r"train.jsonl:2: field 'prompt' is empty",
        ),
        (
            b'{"prompt": 3, "completion": "c"}',
            r"train.jsonl:2: field 'prompt' must be a string",
        ),
        (
            b'{"prompt": "p", "completion": "c", "correct": "yes"}',
            r"train.jsonl:2: field 'correct' must be true or false",
        ),
    ],
)
def test_jsonl_bad_rows(tmp_path, bad, match):
  good = {"prompt": "p", "completion": "c"}
  src = _write(tmp_path / "src" / "train.jsonl", [good, bad, good]).parent
  with pytest.raises(TB.JsonlSchemaError, match=match):
    TB.prepare_jsonl(tmp_path / "raise", "sft", src)
  builder = TB.prepare_jsonl(tmp_path / "skip", "sft", src, on_error="skip")
  assert [r["id"] for r in TB.load_split(builder, "train")] == [
      "train.jsonl:1",
      "train.jsonl:3",
  ]
  # The count survives on disk, next to the data.
  restored = tfds.builder_from_directory(builder.data_dir)
  assert restored.info.metadata["skipped"] == {"train": 1}


def test_user_schema_and_discovered_splits(tmp_path):
  config = TB.JsonlConfig(
      name="scored",
      fields=(
          TB.Field("id"),
          TB.Field("text"),
          TB.Field("score", "float"),
          TB.Field("n", "int", required=False, default=0),
          TB.Field("ok", "bool", required=False, default=True),
      ),
  )
  src = tmp_path / "src"
  _write(src / "dev.jsonl", [{"id": "a", "text": "t", "score": 1, "n": 4}])
  _write(
      src / "eval.jsonl", [{"id": "b", "text": "u", "score": 0.5, "ok": False}]
  )
  builder = TB.prepare_jsonl(tmp_path / "data", config, src)
  assert sorted(builder.info.splits) == ["dev", "eval"]
  assert TB.load_split(builder, "dev")[0] == {
      "id": "a",
      "text": "t",
      "score": 1.0,
      "n": 4,
      "ok": True,
      "extra": "{}",
  }
  assert TB.load_split(builder, "eval")[0] == {
      "id": "b",
      "text": "u",
      "score": 0.5,
      "n": 0,
      "ok": False,
      "extra": "{}",
  }


def test_jsonl_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    TB.prepare_jsonl(tmp_path / "d", "sft", tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"No \*.jsonl files"):
    TB.prepare_jsonl(tmp_path / "d", "sft", tmp_path / "empty")
  _write(tmp_path / "half" / "train.jsonl", [{"question": "q", "answer": "a"}])
  with pytest.raises(FileNotFoundError, match="test.jsonl'?, which does not"):
    TB.prepare_jsonl(tmp_path / "d", "gsm8k", tmp_path / "half")
  _write(
      tmp_path / "odd" / "my-split.jsonl", [{"prompt": "p", "completion": "c"}]
  )
  with pytest.raises(ValueError, match="Split name 'my-split'"):
    TB.prepare_jsonl(tmp_path / "d", "sft", tmp_path / "odd")
  with pytest.raises(ValueError, match="needs config="):
    TB.W2sJsonl(data_dir=tmp_path)
  with pytest.raises(ValueError, match="on_error='ignore'"):
    TB.W2sJsonl(config="sft", data_dir=tmp_path, on_error="ignore")
  with pytest.raises(ValueError, match="needs a default"):
    TB.Field("n", "int", required=False)
  with pytest.raises(ValueError, match="'extra' is reserved"):
    TB.JsonlConfig(name="x", fields=(TB.Field("extra"),))


def _real_data_dir(name):
  for root in (TB._RAW_DIR, pathlib.Path("/work/shared/data")):
    if (root / name / "test.jsonl").is_file():
      return root / name
  pytest.skip(f"no local copy of {name}")


def test_real_gsm8k_and_math500(tmp_path):
  gsm8k = TB.prepare_jsonl(tmp_path, "gsm8k", _real_data_dir("gsm8k"))
  test = TB.load_split(gsm8k, "test")
  assert len(test) == 1319 and len(TB.load_split(gsm8k, "train")) == 7473
  assert all("####" in r["answer"] for r in test)
  math500 = TB.prepare_jsonl(tmp_path, "math500", _real_data_dir("math500"))
  rows = TB.load_split(math500, "test")
  assert len(rows) == 500 and {r["level"] for r in rows} == {1, 2, 3, 4, 5}
