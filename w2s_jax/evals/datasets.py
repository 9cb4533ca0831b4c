"""GSM8K and MATH-500 as plain Python iterators over local JSONL.

The evaluation sets are vendored under ``w2s_jax/data/raw/`` (package data,
with their MIT licenses and a provenance README), so evaluation works
offline; a user path (a file, or a directory holding ``<split>.jsonl``)
overrides them. Every record is a dict::

  {"id": str, "question": str, "answer": str, "solution": str}

where ``answer`` is the extracted gold answer (GSM8K: after the last
``####``, minus ``,``/``$``; MATH-500: the ``answer`` field, else the last
box of the solution). MATH-500 records also carry ``subject`` and ``level``.
GSM8K ids are ``gsm8k/<split>/<row>`` (0-based line index); MATH-500 ids are
the dataset's ``unique_id``.

Problems are reported as ``file:line``: malformed JSON, bytes that are not
UTF-8, a row that is not an object, a missing, non-string or empty field, a
GSM8K solution without ``####``. With ``on_error="raise"`` (default) the
first problem raises ValueError; with ``"skip"`` the row is dropped and
counted (:attr:`Records.num_skipped`, messages in :attr:`Records.errors`).
Blank lines are ignored and a UTF-8 byte-order mark is tolerated.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from typing import Any, Callable, Iterator, Literal

from w2s_jax.evals import extract

OnError = Literal["raise", "skip"]
PathLike = str | os.PathLike

GSM8K_SPLITS = ("train", "test")
# Messages of skipped rows kept verbatim; the count is always exact.
_MAX_KEPT_ERRORS = 100


def raw_data_dir() -> Any:
  """The vendored data directory (an importlib Traversable)."""
  return importlib.resources.files("w2s_jax").joinpath("data", "raw")


class Records(Iterator[dict]):
  """A one-pass iterator over validated records, with skip accounting.

  Attributes:
    path: The file being read.
    num_read: Records yielded so far.
    num_skipped: Bad rows dropped so far (always 0 with ``on_error="raise"``).
    errors: Messages of the first skipped rows.
  """

  def __init__(self, path: Any, parse_row: Callable, on_error: OnError):
    if on_error not in ("raise", "skip"):
      raise ValueError(
          f"on_error must be 'raise' or 'skip', got {on_error!r}; 'skip' drops"
          " and counts bad rows."
      )
    self.path = path
    self.num_read = 0
    self.num_skipped = 0
    self.errors: list[str] = []
    self._parse_row = parse_row
    self._on_error = on_error
    if not path.is_file():
      raise FileNotFoundError(
          f"dataset file {path} not found; pass path= pointing at the JSONL"
          " file (or its directory), or reinstall w2s_jax to restore the"
          " vendored copy."
      )
    self._rows = self._generate()

  def __iter__(self) -> Records:
    return self

  def __next__(self) -> dict:
    return next(self._rows)

  def _generate(self) -> Iterator[dict]:
    with self.path.open("rb") as handle:
      for lineno, raw in enumerate(handle, start=1):
        where = f"{self.path}:{lineno}"
        try:
          text = _decode(raw, lineno, where)
          if not text.strip():
            continue
          row = _loads(text, where)
          record = self._parse_row(row, lineno, where)
        except ValueError as e:
          if self._on_error == "raise":
            raise
          self.num_skipped += 1
          if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(str(e))
          continue
        self.num_read += 1
        yield record


def _decode(raw: bytes, lineno: int, where: str) -> str:
  try:
    return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(
        f"{where}: not valid UTF-8 ({e.reason} at byte {e.start} of the line);"
        " re-encode the file as UTF-8 or read with on_error='skip'."
    ) from None


def _loads(text: str, where: str) -> dict:
  try:
    row = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(
        f"{where}: malformed JSON ({e.msg} at column {e.colno}); fix the line"
        " or read with on_error='skip'."
    ) from None
  if not isinstance(row, dict):
    raise ValueError(
        f"{where}: expected a JSON object per line, got"
        f" {type(row).__name__}; write one object per line."
    )
  return row


def _text_field(row: dict, name: str, where: str) -> str:
  if name not in row:
    raise ValueError(
        f"{where}: field '{name}' is missing; every row needs '{name}'"
        f" (keys present: {sorted(row)[:8]})."
    )
  value = row[name]
  if not isinstance(value, str):
    raise ValueError(
        f"{where}: field '{name}' must be a string, got {type(value).__name__}."
    )
  if not value.strip():
    raise ValueError(f"{where}: field '{name}' is empty; fill it in.")
  return value


def _resolve(path: PathLike | None, default_name: str, dataset: str) -> Any:
  if path is None:
    return raw_data_dir().joinpath(dataset, default_name)
  path = os.fspath(path)
  if os.path.isdir(path):
    return _FsPath(os.path.join(path, default_name))
  return _FsPath(path)


class _FsPath:
  """A filesystem path with the two Traversable methods used here."""

  def __init__(self, path: str):
    self._path = path

  def is_file(self) -> bool:
    return os.path.isfile(self._path)

  def open(self, mode: str):
    return open(self._path, mode)

  def __str__(self) -> str:
    return self._path


def load_gsm8k(
    split: str = "test",
    path: PathLike | None = None,
    *,
    on_error: OnError = "raise",
) -> Records:
  """GSM8K records (7,473 train / 1,319 test in the vendored copy).

  Args:
    split: ``"train"`` or ``"test"``.
    path: None for the vendored file; a JSONL file; or a directory holding
      ``<split>.jsonl``. Rows need ``question`` and ``answer`` (the solution
      ending in ``#### <number>``).
    on_error: ``"raise"`` or ``"skip"`` (drop and count bad rows).

  Returns:
    An iterator of ``{id, question, answer, solution}`` dicts.
  """
  if split not in GSM8K_SPLITS:
    raise ValueError(
        f"GSM8K split must be one of {GSM8K_SPLITS}, got {split!r}."
    )

  def parse_row(row: dict, lineno: int, where: str) -> dict:
    question = _text_field(row, "question", where)
    solution = _text_field(row, "answer", where)
    try:
      gold = extract.gsm8k_gold(solution)
    except ValueError as e:
      raise ValueError(f"{where}: field 'answer': {e}") from None
    return {
        "id": f"gsm8k/{split}/{lineno - 1}",
        "question": question,
        "answer": gold,
        "solution": solution,
    }

  return Records(_resolve(path, f"{split}.jsonl", "gsm8k"), parse_row, on_error)


def load_math500(
    path: PathLike | None = None, *, on_error: OnError = "raise"
) -> Records:
  """MATH-500 records (500 in the vendored copy).

  Args:
    path: None for the vendored file; a JSONL file; or a directory holding
      ``test.jsonl``. Rows need ``problem`` and ``solution``; ``answer`` is
      used when present, else the solution's last box; ``unique_id``,
      ``subject`` and ``level`` are passed through when present.
    on_error: ``"raise"`` or ``"skip"`` (drop and count bad rows).

  Returns:
    An iterator of ``{id, question, answer, solution, subject, level}``
    dicts.
  """

  def parse_row(row: dict, lineno: int, where: str) -> dict:
    question = _text_field(row, "problem", where)
    solution = _text_field(row, "solution", where)
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
      raise ValueError(
          f"{where}: field 'answer' must be a string, got"
          f" {type(answer).__name__}."
      )
    try:
      gold = extract.math_gold(answer, solution)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    uid = row.get("unique_id")
    return {
        "id": uid if isinstance(uid, str) and uid else f"math500/{lineno - 1}",
        "question": question,
        "answer": gold,
        "solution": solution,
        "subject": row.get("subject"),
        "level": row.get("level"),
    }

  return Records(_resolve(path, "test.jsonl", "math500"), parse_row, on_error)
