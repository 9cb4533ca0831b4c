"""A tfds builder for local JSONL files, written as array_record.

``W2sJsonl`` reads one JSON object per line, one file per split, with the
schema declared by a ``JsonlConfig`` of ``Field``s (presets ``gsm8k``,
``math500``, ``sft``, ``preference``). The directory comes from
``source_dir=``, else tfds's ``manual_dir``, else the copy bundled under
``w2s_jax/data/raw/``. Bad rows raise ``JsonlSchemaError`` naming
``file:line`` and the field, or with ``on_error="skip"`` are dropped and
counted (``metadata.json``). Rows keep file order (shuffling disabled).

The array_record helpers here (``FILE_FORMAT``, ``_features``, the tri-state
metadata key) are shared with ``tfds_builders``, which re-exports every
public name of this module and reads prepared splits back (``load_split``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

FILE_FORMAT = "array_record"
_RAW_DIR = pathlib.Path(__file__).parent / "raw"
_TRISTATE_KEY = "tristate_bool_fields"  # metadata: int8 -1/0/1 -> None/F/T


def _features(spec: Mapping[str, Any]) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
      {k: tfds.features.Text() if v is str else v for k, v in spec.items()}
  )


class JsonlSchemaError(ValueError):
  """A JSONL row that breaks the declared schema; the message starts with
  ``path:line``."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One declared JSONL field.

  Attributes:
    name: JSON key.
    dtype: ``text`` (non-empty str when required), ``int``, ``float`` or
      ``bool``.
    required: Absent or null is an error if True, else ``default``.
    default: Value for an absent optional field; None is only allowed for
      ``bool`` (read back as None: "unknown", e.g. an ungraded trace).
  """

  name: str
  dtype: Literal["text", "int", "float", "bool"] = "text"
  required: bool = True
  default: Any = None

  def __post_init__(self):
    if self.dtype not in _DTYPES:
      raise ValueError(
          f"Field {self.name!r}: dtype {self.dtype!r} is not one of"
          f" {sorted(_DTYPES)}."
      )
    if not self.required and self.default is None and self.dtype != "bool":
      raise ValueError(
          f"Optional field {self.name!r} ({self.dtype}) needs a default."
      )

  @property
  def tristate(self) -> bool:
    return self.dtype == "bool" and not self.required and self.default is None


_DTYPES = {"text": str, "int": np.int64, "float": np.float64, "bool": np.bool_}


@dataclasses.dataclass(eq=False)
class JsonlConfig(tfds.core.BuilderConfig):
  """Schema and file layout of a local JSONL dataset.

  Attributes:
    fields: Declared fields. Undeclared keys go, as a JSON object, to the
      ``extra`` feature; ``id`` is ``<file>:<line>`` unless declared.
    splits: ``(split, file name)`` pairs; empty means every ``<split>.jsonl``
      in the directory.
    bundled: Subdirectory of ``w2s_jax/data/raw`` used when no directory is
      given.
  """

  fields: tuple[Field, ...] = ()
  splits: tuple[tuple[str, str], ...] = ()
  bundled: str | None = None

  def __post_init__(self):
    names = [f.name for f in self.fields]
    if not names or len(set(names)) < len(names) or "extra" in names:
      raise ValueError(
          f"JsonlConfig {self.name!r}: fields must be non-empty and unique,"
          f" and 'extra' is reserved (got {names})."
      )


GSM8K = JsonlConfig(
    name="gsm8k",
    description="GSM8K: question, answer (solution ending in '#### n').",
    fields=(Field("question"), Field("answer")),
    splits=(("train", "train.jsonl"), ("test", "test.jsonl")),
    bundled="gsm8k",
)
MATH500 = JsonlConfig(
    name="math500",
    description="MATH-500 (Lightman et al. subset of the MATH test set).",
    fields=(
        Field("problem"),
        Field("solution"),
        Field("answer"),
        Field("subject"),
        Field("level", "int"),
        Field("unique_id"),
    ),
    splits=(("test", "test.jsonl"),),
    bundled="math500",
)
SFT = JsonlConfig(
    name="sft",
    description="SFT traces: prompt, completion, optional correct.",
    fields=(
        Field("prompt"),
        Field("completion"),
        Field("correct", "bool", required=False),
    ),
)
PREFERENCE = JsonlConfig(
    name="preference",
    description="Preference pairs: prompt, chosen (correct), rejected.",
    fields=(Field("prompt"), Field("chosen"), Field("rejected")),
)


def _check_value(f: Field, value: Any, where: str) -> Any:
  bad = None
  if f.dtype == "text":
    if not isinstance(value, str):
      bad = "a string"
    elif f.required and not value.strip():
      raise JsonlSchemaError(f"{where}: field '{f.name}' is empty.")
  elif f.dtype == "int" and (
      isinstance(value, bool) or not isinstance(value, int)
  ):
    bad = "an integer"
  elif f.dtype == "float" and (
      isinstance(value, bool) or not isinstance(value, (int, float))
  ):
    bad = "a number"
  elif f.dtype == "bool" and not isinstance(value, bool):
    bad = "true or false"
  if bad:
    raise JsonlSchemaError(
        f"{where}: field '{f.name}' must be {bad}, got"
        f" {json.dumps(value)[:60]}."
    )
  return value


def parse_jsonl_line(
    raw: bytes, fields: Sequence[Field], path: str, lineno: int
) -> dict[str, Any] | None:
  """Validates one raw line; None for a blank line.

  Raises:
    JsonlSchemaError: naming ``path:lineno`` (and the field) on non-UTF-8
      bytes, malformed JSON, a non-object, or a missing/empty/mistyped field.
  """
  where = f"{path}:{lineno}"
  try:
    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
  except UnicodeDecodeError as e:
    raise JsonlSchemaError(
        f"{where}: not valid UTF-8 (byte {e.start}); re-encode the file as"
        " UTF-8."
    ) from None
  if not text.strip():
    return None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise JsonlSchemaError(
        f"{where}: malformed JSON ({e.msg}, column {e.colno})."
    ) from None
  if not isinstance(obj, dict):
    raise JsonlSchemaError(
        f"{where}: expected a JSON object, got {type(obj).__name__}."
    )
  row = {}
  for f in fields:
    value = obj.get(f.name)
    if value is None:
      if f.required:
        raise JsonlSchemaError(
            f"{where}: missing field '{f.name}' (schema fields:"
            f" {[g.name for g in fields]})."
        )
      row[f.name] = -1 if f.tristate else f.default
    else:
      row[f.name] = _check_value(f, value, where)
  declared = {f.name for f in fields}
  row["extra"] = json.dumps(
      {k: v for k, v in obj.items() if k not in declared},
      sort_keys=True,
      ensure_ascii=False,
  )
  return row


class W2sJsonl(tfds.core.GeneratorBasedBuilder):
  """A local JSONL dataset read from a directory (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [GSM8K, MATH500, SFT, PREFERENCE]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put <split>.jsonl files in a directory and pass source_dir=that"
      " directory (or DownloadConfig(manual_dir=...))."
  )

  def __init__(
      self,
      *,
      config: str | JsonlConfig | None = None,
      source_dir: str | os.PathLike[str] | None = None,
      on_error: Literal["raise", "skip"] = "raise",
      data_dir: str | os.PathLike[str] | None = None,
      version: str | None = None,
  ):
    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error={on_error!r}: choose 'raise' or 'skip'.")
    if config is None:
      raise ValueError(
          "W2sJsonl needs config=: one of 'gsm8k', 'math500', 'sft',"
          " 'preference', or a JsonlConfig for your own schema."
      )
    self._source_dir = source_dir
    self._on_error = on_error
    super().__init__(
        config=config,
        data_dir=data_dir,
        version=version,
        file_format=FILE_FORMAT,
    )
    # Kept so that a pickled builder (tfds pickles _original_state) rebuilds.
    self._original_state.update(source_dir=source_dir, on_error=on_error)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    spec = {
        f.name: np.int8 if f.tristate else _DTYPES[f.dtype] for f in c.fields
    }
    spec.setdefault("id", str)
    spec["extra"] = str
    tristate = [f.name for f in c.fields if f.tristate]
    return tfds.core.DatasetInfo(
        builder=self,
        description=c.description,
        features=_features(spec),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            {_TRISTATE_KEY: tristate, "skipped": {}}
        ),
    )

  def _resolve_source(self, dl_manager) -> pathlib.Path:
    c, tried = self.builder_config, []
    if self._source_dir is not None:
      path = pathlib.Path(self._source_dir)
      if not path.is_dir():
        raise FileNotFoundError(
            f"source_dir={os.fspath(path)!r} is not a directory; pass the"
            f" directory holding the {c.name} JSONL files."
        )
      return path
    try:
      return pathlib.Path(dl_manager.manual_dir)
    except (AssertionError, ValueError):  # tfds: no manual dir
      tried.append("manual_dir")
    if c.bundled and (_RAW_DIR / c.bundled).is_dir():
      return _RAW_DIR / c.bundled
    if c.bundled:
      tried.append(os.fspath(_RAW_DIR / c.bundled))
    raise FileNotFoundError(
        f"No source directory for JSONL config {c.name!r} (tried:"
        f" {', '.join(tried)}); pass source_dir=<directory with the .jsonl"
        " files>."
    )

  def _split_generators(self, dl_manager):
    c, source = self.builder_config, self._resolve_source(dl_manager)
    pairs = c.splits or tuple(
        (p.stem, p.name) for p in sorted(source.glob("*.jsonl"))
    )
    if not pairs:
      raise FileNotFoundError(
          f"No *.jsonl files in {os.fspath(source)!r}; name them"
          " <split>.jsonl (e.g. train.jsonl)."
      )
    splits = {}
    for split, name in pairs:
      if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(
            f"Split name {split!r} (from {name!r}) must be letters, digits or"
            " '_'; rename the file."
        )
      if not (source / name).is_file():
        raise FileNotFoundError(
            f"Split {split!r} of {c.name!r} expects"
            f" {os.fspath(source / name)!r}, which does not exist."
        )
      splits[split] = self._generate_examples(source / name, split)
    return splits

  def _generate_examples(self, path: pathlib.Path, split: str):
    fields, skipped = self.builder_config.fields, 0
    declares_id = any(f.name == "id" for f in fields)
    with open(path, "rb") as f:
      for lineno, raw in enumerate(f, start=1):
        try:
          row = parse_jsonl_line(raw, fields, os.fspath(path), lineno)
        except JsonlSchemaError as e:
          if self._on_error == "raise":
            raise
          skipped += 1
          if skipped <= 10:
            logging.warning("Skipping bad row: %s", e)
          continue
        if row is None:
          continue
        key = f"{path.name}:{lineno}"
        if not declares_id:
          row["id"] = key
        yield key, row
    if skipped:
      logging.warning("%s: skipped %d bad rows.", path, skipped)
    self.info.metadata["skipped"][split] = skipped
