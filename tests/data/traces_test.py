"""Tests for w2s_jax.data.traces: schemas, file:line errors, atomic writes."""

import json
import os

import pytest

from w2s_jax.data import traces


def _write_bytes(path, *lines: bytes) -> str:
  path.write_bytes(b"\n".join(lines) + b"\n")
  return str(path)


def _row(**kw) -> bytes:
  return json.dumps(kw, ensure_ascii=False).encode("utf-8")


def test_sft_round_trip_keeps_extra_fields_and_unicode(tmp_path):
  records = [
      traces.SFTRecord("2+2?", "4 \\boxed{4}", True, {"id": 7, "t": 0.6}),
      traces.SFTRecord("Ünïcode ∑?", "∑ = 3", False),
      traces.SFTRecord("ungraded", "trace", None, {"teacher": "qwen"}),
  ]
  path = tmp_path / "sft.jsonl"
  traces.write_sft(path, records)
  rows = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
  # Ungraded rows omit the key instead of writing null.
  assert "correct" not in rows[2]
  assert rows[0] == {
      "prompt": "2+2?",
      "completion": "4 \\boxed{4}",
      "correct": True,
      "id": 7,
      "t": 0.6,
  }
  result = traces.read_sft(path)
  assert result.records == records
  assert result.num_skipped == 0


def test_preference_round_trip(tmp_path):
  records = [
      traces.PreferenceRecord("p1", "good", "bad", {"id": "a"}),
      traces.PreferenceRecord("p2", "yes", "no"),
  ]
  path = tmp_path / "pairs.jsonl"
  traces.write_preferences(path, records)
  assert traces.read_preferences(path).records == records


def test_blank_lines_crlf_and_bom_are_tolerated(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_bytes(
      b"\xef\xbb\xbf"
      + _row(prompt="a", completion="b")
      + b"\r\n\r\n   \n"
      + _row(prompt="c", completion="d", correct=None)
      + b"\r\n"
  )
  got = traces.read_sft(path).records
  assert [(r.prompt, r.completion, r.correct) for r in got] == [
      ("a", "b", None),
      ("c", "d", None),
  ]


@pytest.mark.parametrize(
    "line, match",
    [
        (b'{"prompt": "a", "completion": ', r"x\.jsonl:3: malformed JSON"),
        (b"\xff\xfe bad bytes", r"x\.jsonl:3: not valid UTF-8 .*0xff"),
        (b'["prompt", "completion"]', r"x\.jsonl:3: expected a JSON object"),
        (b'{"prompt": "a"}', r"x\.jsonl:3: field 'completion': missing"),
        (
            b'{"prompt": "a", "completion": "   "}',
            r"x\.jsonl:3: field 'completion': is empty",
        ),
        (
            b'{"prompt": 5, "completion": "b"}',
            r"x\.jsonl:3: field 'prompt': must be a string, got int",
        ),
        (
            b'{"prompt": "a", "completion": "b", "correct": 1}',
            r"x\.jsonl:3: field 'correct': must be true, false or null",
        ),
        (
            b'{"prompt": "a", "completion": "b", "correct": "true"}',
            r"x\.jsonl:3: field 'correct': .*got str",
        ),
    ],
)
def test_sft_errors_name_file_line_and_field(tmp_path, line, match):
  good = _row(prompt="p", completion="c")
  path = _write_bytes(tmp_path / "x.jsonl", good, good, line, good)
  with pytest.raises(traces.TraceFormatError, match=match) as info:
    traces.read_sft(path)
  assert info.value.line == 3
  skipped = traces.read_sft(path, on_error="skip")
  assert skipped.num_skipped == 1
  assert len(skipped.records) == 3
  assert len(skipped.errors) == 1 and ":3:" in skipped.errors[0]


def test_skip_counts_every_bad_row(tmp_path):
  good = _row(prompt="p", completion="c")
  path = _write_bytes(
      tmp_path / "y.jsonl", b"{", good, b"\xc3\x28", b"{}", good, b"[1]"
  )
  result = traces.read_sft(path, on_error="skip")
  assert result.num_skipped == 4
  assert len(result.records) == 2
  assert [e.split(":")[1] for e in result.errors] == ["1", "3", "4", "6"]


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "a", "chosen": "b"}, "field 'rejected': missing"),
        (
            {"prompt": "a", "chosen": "", "rejected": "c"},
            "field 'chosen': is empty",
        ),
        (
            {"prompt": "a", "chosen": ["b"], "rejected": "c"},
            "field 'chosen': must be a string, got list",
        ),
        (
            {"prompt": "a", "chosen": "b", "rejected": "b"},
            "field 'rejected': is identical",
        ),
    ],
)
def test_preference_errors(tmp_path, row, match):
  path = _write_bytes(tmp_path / "p.jsonl", _row(**row))
  with pytest.raises(traces.TraceFormatError, match=r"p\.jsonl:1: " + match):
    traces.read_preferences(path)
  assert traces.read_preferences(path, on_error="skip").num_skipped == 1


def test_missing_file_and_bad_on_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl.*does not exist"):
    traces.read_sft(tmp_path / "nope.jsonl")
  path = _write_bytes(tmp_path / "z.jsonl", _row(prompt="a", completion="b"))
  with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
    traces.read_sft(path, on_error="ignore")


def _dir_listing(tmp_path):
  return sorted(os.listdir(tmp_path))


def test_writer_is_atomic_when_a_record_is_invalid(tmp_path):
  path = tmp_path / "sft.jsonl"
  traces.write_sft(path, [traces.SFTRecord("old", "data")])
  before = path.read_bytes()

  def records():
    yield traces.SFTRecord("new", "row")
    yield traces.SFTRecord("new", "")  # invalid: empty completion

  with pytest.raises(ValueError, match="record 1: field 'completion'"):
    traces.write_sft(path, records())
  assert path.read_bytes() == before
  assert _dir_listing(tmp_path) == ["sft.jsonl"]  # no temp file left


def test_writer_is_atomic_on_crash_during_rename(tmp_path, monkeypatch):
  path = tmp_path / "pairs.jsonl"
  traces.write_preferences(path, [traces.PreferenceRecord("p", "a", "b")])
  before = path.read_bytes()

  def crash(*args):
    raise OSError("simulated crash")

  monkeypatch.setattr(traces.os, "replace", crash)
  with pytest.raises(OSError, match="simulated crash"):
    traces.write_preferences(path, [traces.PreferenceRecord("q", "c", "d")])
  assert path.read_bytes() == before
  assert _dir_listing(tmp_path) == ["pairs.jsonl"]


def test_writer_rejects_unserialisable_extra_and_missing_dir(tmp_path):
  bad = traces.SFTRecord("p", "c", True, {"x": object()})
  with pytest.raises(ValueError, match="record 0 cannot be written as JSON"):
    traces.write_sft(tmp_path / "a.jsonl", [bad])
  clash = traces.SFTRecord("p", "c", True, {"prompt": "other"})
  with pytest.raises(ValueError, match="'extra' repeats schema field"):
    traces.write_sft(tmp_path / "a.jsonl", [clash])
  with pytest.raises(FileNotFoundError, match="does not exist; create it"):
    traces.write_sft(tmp_path / "missing" / "a.jsonl", [])
  assert _dir_listing(tmp_path) == []


def test_w2sr_p_is_the_correct_subset_of_w2sr(tmp_path):
  grades = [True, False, True, True, False, False, True]
  records = [
      traces.SFTRecord(f"p{i}", f"c{i}", g, {"i": i})
      for i, g in enumerate(grades)
  ]
  path = tmp_path / "t.jsonl"
  traces.write_sft(path, records)
  loaded = traces.read_sft(path).records
  w2sr = traces.select_traces(loaded, "w2sr")
  w2sr_p = traces.select_traces(loaded, "w2sr_p")
  assert w2sr == records
  assert [r.extra["i"] for r in w2sr_p] == [0, 2, 3, 6]
  assert all(r in w2sr for r in w2sr_p)
  assert all(r.correct for r in w2sr_p)
  with pytest.raises(ValueError, match="trace 1 has no 'correct' grade"):
    traces.select_traces(
        [traces.SFTRecord("a", "b", True), traces.SFTRecord("c", "d")],
        "w2sr_p",
    )
  with pytest.raises(ValueError, match="variant must be 'w2sr'"):
    traces.select_traces(records, "w2srp")


def test_written_files_get_normal_permissions(tmp_path):
  umask = os.umask(0)
  os.umask(umask)
  path = tmp_path / "p.jsonl"
  traces.write_sft(path, [traces.SFTRecord("a", "b")])
  # mkstemp creates 0o600; the committed file follows the umask instead.
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
  os.chmod(path, 0o640)
  traces.write_sft(path, [traces.SFTRecord("c", "d")])
  assert os.stat(path).st_mode & 0o777 == 0o640
  assert traces.read_sft(path).records[0].prompt == "c"
