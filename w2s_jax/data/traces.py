"""Reading and writing user trace files (JSONL) with schema validation.

Two row schemas, one JSON object per line:

* SFT traces: ``{"prompt": str, "completion": str[, "correct": bool][, ...]}``.
  Used by W2SR (weak-teacher traces), RSD traces and plain SFT. ``correct`` is
  the grade of the completion (docs/methods.md, "Grading"); absent or ``null`` means
  ungraded.
* Preference pairs: ``{"prompt": str, "chosen": str, "rejected": str[, ...]}``
  for REDI / DPO / SimPO (docs/methods.md, "REDI, DPO, SimPO"): ``chosen`` is the correct trace y_w,
  ``rejected`` the incorrect one y_l.

Any other keys are kept, untouched, in ``extra`` and written back out, so
provenance (problem id, teacher name, sampling temperature) survives a
read-filter-write round trip.

Validation names ``file:line`` and the field for every problem: malformed
JSON, a line that is not valid UTF-8, a row that is not an object, a missing
field, a field of the wrong type, an empty (or whitespace-only) string. With
``on_error="skip"`` bad rows are dropped, counted and logged instead. Blank
lines are ignored; a UTF-8 byte-order mark on the first line is tolerated.

Writers are atomic: rows go to a temporary file in the destination
directory, which is fsynced and then ``os.replace``d over the target, so a
crash mid-write leaves any existing file intact and never a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Generic, Iterable, Literal, Mapping, TypeVar

from absl import logging

OnError = Literal["raise", "skip"]
PathLike = str | os.PathLike[str]

_SFT_FIELDS = ("prompt", "completion")
_PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
# How many skipped-row messages are kept verbatim; the count is always exact.
_MAX_KEPT_ERRORS = 100


class TraceFormatError(ValueError):
  """A trace file row that breaks the schema.

  Attributes:
    path: The file.
    line: 1-based line number.
    field: The offending field, or None for whole-line problems.
  """

  def __init__(self, path: PathLike, line: int, field: str | None, msg: str):
    self.path = os.fspath(path)
    self.line = line
    self.field = field
    where = f"{self.path}:{line}"
    if field is not None:
      where += f": field '{field}'"
    super().__init__(f"{where}: {msg}")


@dataclasses.dataclass(frozen=True)
class SFTRecord:
  """One SFT trace: a prompt, a completion and its optional grade.

  Attributes:
    prompt: The problem as shown to the model (before the chat template).
    completion: The trace to imitate.
    correct: Grade of the completion; None when ungraded.
    extra: Every other key of the JSON row, preserved for writing back.
  """

  prompt: str
  completion: str
  correct: bool | None = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
  """One preference pair: a correct (chosen) and incorrect (rejected) trace.

  Attributes:
    prompt: The problem.
    chosen: The positive trace y_w.
    rejected: The negative trace y_l.
    extra: Every other key of the JSON row.
  """

  prompt: str
  chosen: str
  rejected: str
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


RecordT = TypeVar("RecordT", SFTRecord, PreferenceRecord)


@dataclasses.dataclass(frozen=True)
class ReadResult(Generic[RecordT]):
  """Rows read from a trace file.

  Attributes:
    records: The valid rows, in file order.
    num_skipped: Number of invalid rows dropped (always 0 with "raise").
    errors: Messages (``file:line: ...``) of the first skipped rows.
  """

  records: list[RecordT]
  num_skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)


def _check_on_error(on_error: str) -> None:
  if on_error not in ("raise", "skip"):
    raise ValueError(
        f"on_error must be 'raise' or 'skip', got {on_error!r}; use 'skip' to"
        " drop and count invalid rows."
    )


def _iter_json_objects(
    path: PathLike,
) -> Iterable[tuple[int, dict[str, Any] | TraceFormatError]]:
  """Yields (line number, parsed object or the error for that line)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"trace file {path!r} does not exist; pass the path of a JSONL file"
        " with one JSON object per line."
    )
  # Binary mode so that one bad byte is reported at its line instead of
  # failing the whole file inside the text decoder.
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield lineno, TraceFormatError(
            path,
            lineno,
            None,
            f"not valid UTF-8 ({e.reason}, byte 0x{raw[e.start]:02x} at"
            f" offset {e.start}); re-encode the file as UTF-8.",
        )
        continue
      if not text.strip():
        continue
      try:
        obj = json.loads(text)
      except json.JSONDecodeError as e:
        yield lineno, TraceFormatError(
            path,
            lineno,
            None,
            f"malformed JSON ({e.msg} at column {e.colno}); each line must"
            " hold exactly one JSON object.",
        )
        continue
      if not isinstance(obj, dict):
        yield lineno, TraceFormatError(
            path,
            lineno,
            None,
            f"expected a JSON object, got {type(obj).__name__}; each line"
            ' must be an object such as {"prompt": ..., ...}.',
        )
        continue
      yield lineno, obj


def _require_text(
    obj: Mapping[str, Any],
    field: str,
    required: tuple[str, ...],
    path: PathLike,
    lineno: int,
) -> str:
  if field not in obj:
    raise TraceFormatError(
        path,
        lineno,
        field,
        f"missing; every row needs {', '.join(map(repr, required))} (found"
        f" keys {sorted(obj)!r}).",
    )
  value = obj[field]
  if not isinstance(value, str):
    raise TraceFormatError(
        path,
        lineno,
        field,
        f"must be a string, got {type(value).__name__} ({value!r:.40}).",
    )
  if not value.strip():
    raise TraceFormatError(
        path, lineno, field, "is empty; drop the row or fill in the text."
    )
  return value


def _parse_sft(obj: Mapping[str, Any], path: PathLike, lineno: int):
  prompt = _require_text(obj, "prompt", _SFT_FIELDS, path, lineno)
  completion = _require_text(obj, "completion", _SFT_FIELDS, path, lineno)
  correct = obj.get("correct")
  # bool is checked exactly: 0/1 or "true" usually mean a grading bug.
  if correct is not None and not isinstance(correct, bool):
    raise TraceFormatError(
        path,
        lineno,
        "correct",
        f"must be true, false or null, got {type(correct).__name__}"
        f" ({correct!r:.40}).",
    )
  extra = {k: v for k, v in obj.items() if k not in (*_SFT_FIELDS, "correct")}
  return SFTRecord(prompt, completion, correct, extra)


def _parse_preference(obj: Mapping[str, Any], path: PathLike, lineno: int):
  prompt = _require_text(obj, "prompt", _PREFERENCE_FIELDS, path, lineno)
  chosen = _require_text(obj, "chosen", _PREFERENCE_FIELDS, path, lineno)
  rejected = _require_text(obj, "rejected", _PREFERENCE_FIELDS, path, lineno)
  if chosen == rejected:
    raise TraceFormatError(
        path,
        lineno,
        "rejected",
        "is identical to 'chosen', so the pair carries no signal; pair the"
        " prompt with an incorrect trace or drop the row.",
    )
  extra = {k: v for k, v in obj.items() if k not in _PREFERENCE_FIELDS}
  return PreferenceRecord(prompt, chosen, rejected, extra)


def _read(path: PathLike, parse, on_error: OnError, kind: str) -> ReadResult:
  _check_on_error(on_error)
  records, errors, num_skipped = [], [], 0
  for lineno, obj in _iter_json_objects(path):
    try:
      if isinstance(obj, TraceFormatError):
        raise obj
      records.append(parse(obj, path, lineno))
    except TraceFormatError as e:
      if on_error == "raise":
        raise
      num_skipped += 1
      if len(errors) < _MAX_KEPT_ERRORS:
        errors.append(str(e))
  if num_skipped:
    logging.warning(
        "%s: skipped %d invalid %s row(s); first: %s",
        os.fspath(path),
        num_skipped,
        kind,
        errors[0],
    )
  return ReadResult(records, num_skipped, errors)


def read_sft(path: PathLike, *, on_error: OnError = "raise") -> ReadResult:
  """Reads an SFT trace file.

  Args:
    path: JSONL file, one ``{prompt, completion[, correct]}`` object per line.
    on_error: "raise" stops at the first invalid row with a
      :class:`TraceFormatError` naming ``file:line`` and the field; "skip"
      drops invalid rows, counts them and logs a warning.

  Returns:
    A :class:`ReadResult` of :class:`SFTRecord`.

  Raises:
    FileNotFoundError: If ``path`` does not exist.
    TraceFormatError: On an invalid row when ``on_error="raise"``.
  """
  return _read(path, _parse_sft, on_error, "SFT")


def read_preferences(
    path: PathLike, *, on_error: OnError = "raise"
) -> ReadResult:
  """Reads a preference-pair file (``{prompt, chosen, rejected}`` rows).

  Args:
    path: JSONL file.
    on_error: "raise" or "skip", as in :func:`read_sft`.

  Returns:
    A :class:`ReadResult` of :class:`PreferenceRecord`.

  Raises:
    FileNotFoundError: If ``path`` does not exist.
    TraceFormatError: On an invalid row when ``on_error="raise"``.
  """
  return _read(path, _parse_preference, on_error, "preference")


def temp_path_for(path: PathLike) -> str:
  """Creates an empty temporary file next to ``path`` and returns its name.

  Same directory, so the final ``os.replace`` is a rename within one
  filesystem.

  Raises:
    FileNotFoundError: If the destination directory does not exist.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"directory {directory!r} for {path!r} does not exist; create it first."
    )
  fd, tmp = tempfile.mkstemp(
      dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
  )
  os.close(fd)
  return tmp


def commit_temp_file(tmp: str, path: PathLike) -> None:
  """Durably renames a finished temporary file over ``path``.

  fsyncs the data, gives the file the permissions of the file it replaces
  (or the umask's default; mkstemp's are owner-only), renames, then fsyncs
  the directory so the rename survives a crash. Removes ``tmp`` on failure.
  """
  path = os.fspath(path)
  try:
    if os.path.exists(path):
      mode = os.stat(path).st_mode & 0o777
    else:
      umask = os.umask(0)
      os.umask(umask)
      mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    _fsync(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync(os.path.dirname(os.path.abspath(path)))


def _fsync(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # Some filesystems refuse fsync on directories.
  finally:
    os.close(fd)


def atomic_write_lines(path: PathLike, lines: Iterable[str]) -> None:
  """Writes text lines to ``path`` atomically (temp file, fsync, rename).

  Args:
    path: Destination; its directory must exist.
    lines: Lines without their trailing newline.

  Raises:
    FileNotFoundError: If the destination directory does not exist.
  """
  tmp = temp_path_for(path)
  try:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
      for line in lines:
        f.write(line)
        f.write("\n")
  except BaseException:
    os.remove(tmp)
    raise
  commit_temp_file(tmp, path)


def _dump(row: dict[str, Any], index: int) -> str:
  try:
    return json.dumps(row, ensure_ascii=False, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"record {index} cannot be written as JSON ({e}); keep 'extra'"
        " values to str, int, float, bool, None, lists and dicts."
    ) from e


def _check_record(record: Any, cls: type, index: int, fields) -> None:
  if not isinstance(record, cls):
    raise ValueError(
        f"record {index} is a {type(record).__name__}, expected {cls.__name__}."
    )
  for field in fields:
    value = getattr(record, field)
    if not isinstance(value, str) or not value.strip():
      raise ValueError(
          f"record {index}: field '{field}' must be a non-empty string, got"
          f" {value!r:.40}."
      )
  clash = set(record.extra) & {*fields, "correct"}
  if clash:
    raise ValueError(
        f"record {index}: 'extra' repeats schema field(s) {sorted(clash)};"
        " set them on the record instead."
    )


def _sft_lines(records: Iterable[SFTRecord]) -> Iterable[str]:
  for i, r in enumerate(records):
    _check_record(r, SFTRecord, i, _SFT_FIELDS)
    if r.correct is not None and not isinstance(r.correct, bool):
      raise ValueError(f"record {i}: 'correct' must be a bool or None.")
    row: dict[str, Any] = {"prompt": r.prompt, "completion": r.completion}
    if r.correct is not None:
      row["correct"] = r.correct
    row.update(r.extra)
    yield _dump(row, i)


def _preference_lines(records: Iterable[PreferenceRecord]) -> Iterable[str]:
  for i, r in enumerate(records):
    _check_record(r, PreferenceRecord, i, _PREFERENCE_FIELDS)
    row = {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
    row.update(r.extra)
    yield _dump(row, i)


def write_sft(path: PathLike, records: Iterable[SFTRecord]) -> None:
  """Writes SFT records as JSONL, atomically.

  Args:
    path: Destination file; replaced only once every row is written.
    records: The rows; ``correct=None`` omits the key.

  Raises:
    ValueError: On an invalid record (the file is left untouched).
  """
  atomic_write_lines(path, _sft_lines(records))


def write_preferences(
    path: PathLike, records: Iterable[PreferenceRecord]
) -> None:
  """Writes preference pairs as JSONL, atomically.

  Args:
    path: Destination file; replaced only once every row is written.
    records: The pairs.

  Raises:
    ValueError: On an invalid record (the file is left untouched).
  """
  atomic_write_lines(path, _preference_lines(records))


def select_traces(
    records: Iterable[SFTRecord], variant: Literal["w2sr", "w2sr_p"]
) -> list[SFTRecord]:
  """Selects weak-teacher traces for W2SR (docs/methods.md, "W2SR").

  W2SR keeps every trace, correct or not; W2SR-P keeps the correct ones only,
  so W2SR-P ⊆ W2SR.

  Args:
    records: Graded traces.
    variant: "w2sr" (all traces) or "w2sr_p" (correct only).

  Returns:
    The selected records, in input order.

  Raises:
    ValueError: On an unknown variant, or for "w2sr_p" when a trace is
      ungraded (``correct is None``), since silently dropping it would bias
      the subset.
  """
  if variant not in ("w2sr", "w2sr_p"):
    raise ValueError(
        "variant must be 'w2sr' (all traces) or 'w2sr_p' (correct only), got"
        f" {variant!r}."
    )
  records = list(records)
  if variant == "w2sr":
    return list(records)
  selected = []
  for i, r in enumerate(records):
    if r.correct is None:
      raise ValueError(
          f"trace {i} has no 'correct' grade; W2SR-P needs graded traces,"
          " grade them first (w2s_jax.evals) or use variant='w2sr'."
      )
    if r.correct:
      selected.append(r)
  return selected
