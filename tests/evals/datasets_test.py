"""Tests for w2s_jax.evals.datasets: vendored data and JSONL error handling."""

import hashlib
import json

import pytest

from w2s_jax.evals import datasets

# sha256 of the files in ../shared/data at vendoring time (provenance check).
VENDORED_SHA256 = {
    "gsm8k/test.jsonl": (
        "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"
    ),
    "gsm8k/train.jsonl": (
        "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"
    ),
    "math500/test.jsonl": (
        "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"
    ),
}


def _write(tmp_path, name, lines):
  path = tmp_path / name
  data = b"".join(
      (line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n"
      for line in lines
  )
  path.write_bytes(data)
  return path


def _gsm8k_row(question="Q?", answer="2+2=4\n#### 4"):
  return json.dumps({"question": question, "answer": answer})


def test_vendored_files_licenses_and_checksums():
  root = datasets.raw_data_dir()
  for name, digest in VENDORED_SHA256.items():
    data = root.joinpath(*name.split("/")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest, name
  for name in ("gsm8k/LICENSE", "math500/LICENSE"):
    assert "MIT License" in root.joinpath(*name.split("/")).read_text()
  assert "openai/grade-school-math" in root.joinpath("README.md").read_text()


@pytest.mark.parametrize("split, count", [("train", 7473), ("test", 1319)])
def test_load_gsm8k_vendored(split, count):
  records = datasets.load_gsm8k(split)
  rows = list(records)
  assert len(rows) == count == records.num_read
  assert records.num_skipped == 0
  assert len({r["id"] for r in rows}) == count
  assert rows[0]["id"] == f"gsm8k/{split}/0"
  for r in rows:
    assert set(r) == {"id", "question", "answer", "solution"}
    # Independent gold: the text after the final "####", minus commas.
    want = r["solution"].split("####")[-1].strip().replace(",", "")
    assert r["answer"] == want
    assert int(r["answer"]) == int(want)


def test_load_math500_vendored():
  rows = list(datasets.load_math500())
  assert len(rows) == 500
  assert len({r["id"] for r in rows}) == 500
  path = datasets.raw_data_dir().joinpath("math500", "test.jsonl")
  raw = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
  for r, src in zip(rows, raw, strict=True):
    assert r["id"] == src["unique_id"]
    assert r["question"] == src["problem"]
    assert r["answer"] == src["answer"]
    assert (r["subject"], r["level"]) == (src["subject"], src["level"])


def test_user_path_file_or_directory(tmp_path):
  _write(
      tmp_path, "test.jsonl", [_gsm8k_row(), "", _gsm8k_row("Q2", "#### 1,000")]
  )
  by_dir = list(datasets.load_gsm8k("test", tmp_path))
  by_file = list(datasets.load_gsm8k("train", tmp_path / "test.jsonl"))
  assert by_dir == [
      {
          "id": "gsm8k/test/0",
          "question": "Q?",
          "answer": "4",
          "solution": "2+2=4\n#### 4",
      },
      {
          "id": "gsm8k/test/2",
          "question": "Q2",
          "answer": "1000",
          "solution": "#### 1,000",
      },
  ]
  assert [r["answer"] for r in by_file] == ["4", "1000"]


def test_byte_order_mark_is_tolerated(tmp_path):
  path = _write(
      tmp_path, "bom.jsonl", [b"\xef\xbb\xbf" + _gsm8k_row().encode()]
  )
  assert [r["answer"] for r in datasets.load_gsm8k("test", path)] == ["4"]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"question": "Q", "answer": ', r"bad\.jsonl:2: malformed JSON"),
        (
            b'{"question": "Q\xff\xfe", "answer": "#### 1"}',
            r"bad\.jsonl:2: not valid UTF-8",
        ),
        ('["a", "list"]', r"bad\.jsonl:2: expected a JSON object"),
        ('{"answer": "#### 1"}', r"bad\.jsonl:2: field 'question' is missing"),
        (
            '{"question": "  ", "answer": "#### 1"}',
            r"bad\.jsonl:2: field 'question' is empty",
        ),
        (
            '{"question": 3, "answer": "#### 1"}',
            r"bad\.jsonl:2: field 'question' must be a string",
        ),
        (
            '{"question": "Q", "answer": "no marker"}',
            r"bad\.jsonl:2: field 'answer': .*####",
        ),
    ],
)
def test_bad_rows_raise_or_skip(tmp_path, bad_line, message):
  path = _write(
      tmp_path, "bad.jsonl", [_gsm8k_row(), bad_line, _gsm8k_row("Q3")]
  )
  with pytest.raises(ValueError, match=message):
    list(datasets.load_gsm8k("test", path))
  records = datasets.load_gsm8k("test", path, on_error="skip")
  rows = list(records)
  assert [r["question"] for r in rows] == ["Q?", "Q3"]
  assert records.num_skipped == 1 and records.num_read == 2
  assert len(records.errors) == 1
  assert records.errors[0].startswith(f"{path}:2:")


def test_math500_answer_fallback_and_errors(tmp_path):
  rows = [
      json.dumps({"problem": "P1", "solution": r"so \boxed{\frac{1}{2}}."}),
      json.dumps(
          {"problem": "P2", "solution": "S", "answer": "7", "unique_id": "u2"}
      ),
      json.dumps({"problem": "P3", "solution": "no box here"}),
      json.dumps({"problem": "P4", "solution": "S", "answer": 7}),
  ]
  path = _write(tmp_path, "test.jsonl", rows)
  records = datasets.load_math500(tmp_path, on_error="skip")
  got = list(records)
  assert [(r["id"], r["answer"]) for r in got] == [
      ("math500/0", r"\frac{1}{2}"),
      ("u2", "7"),
  ]
  assert records.num_skipped == 2
  assert "test.jsonl:3: MATH problem has no gold answer" in records.errors[0]
  assert "test.jsonl:4: field 'answer' must be a string" in records.errors[1]
  with pytest.raises(
      ValueError, match=r"test\.jsonl:3: MATH problem has no gold"
  ):
    list(datasets.load_math500(path))


def test_bad_arguments(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found; pass path="):
    datasets.load_gsm8k("test", tmp_path / "missing.jsonl")
  with pytest.raises(FileNotFoundError, match="test.jsonl not found"):
    datasets.load_math500(tmp_path)  # A directory without test.jsonl.
  with pytest.raises(ValueError, match="split must be one of"):
    datasets.load_gsm8k("validation")
  with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
    datasets.load_gsm8k("test", on_error="ignore")
