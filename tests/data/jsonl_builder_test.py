"""Tests for w2s_jax.data.jsonl_builder (array_record, no TensorFlow).

Datasets are prepared and read back through tfds_builders (prepare_jsonl,
load_split).
"""

import json
import pathlib

import pytest
import tensorflow_datasets as tfds

from w2s_jax.data import jsonl_builder as JB
from w2s_jax.data import tfds_builders as TB

tfds.disable_progress_bar()


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
  with pytest.raises(JB.JsonlSchemaError, match=match):
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
  config = JB.JsonlConfig(
      name="scored",
      fields=(
          JB.Field("id"),
          JB.Field("text"),
          JB.Field("score", "float"),
          JB.Field("n", "int", required=False, default=0),
          JB.Field("ok", "bool", required=False, default=True),
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
    JB.W2sJsonl(data_dir=tmp_path)
  with pytest.raises(ValueError, match="on_error='ignore'"):
    JB.W2sJsonl(config="sft", data_dir=tmp_path, on_error="ignore")
  with pytest.raises(ValueError, match="needs a default"):
    JB.Field("n", "int", required=False)
  with pytest.raises(ValueError, match="'extra' is reserved"):
    JB.JsonlConfig(name="x", fields=(JB.Field("extra"),))


def _real_data_dir(name):
  for root in (JB._RAW_DIR, pathlib.Path("/work/shared/data")):
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
