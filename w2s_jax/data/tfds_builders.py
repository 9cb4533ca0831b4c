"""tfds builders for the synthetic task and local JSONL files (array_record).

Datasets are written in the array_record format, which tfds reads and
writes without TensorFlow, and read back with random access through
``tfds.data_sources``; ``load_split`` returns a sequence of plain dicts that
``grain.MapDataset.source`` accepts. Nothing is ever downloaded.

* ``W2sSynthetic`` (here): ``w2s_jax.data.synthetic`` as a dataset. Splits
  ``train``/``test`` (disjoint by problem), plus ``pretrain`` (latent-skill
  corpus, ``num_pretrain > 0``) and ``facts`` (bare facts,
  ``num_fact_lines > 0``). Knobs are ``SyntheticConfig`` fields, given as a
  config or as keyword arguments (which name the config after their hash, so
  different knobs never share a directory). ``fact_error_rate`` and
  ``slip_prob`` make the *train* solutions a weak teacher's; test and
  pretrain stay gold.
* ``W2sJsonl`` (``jsonl_builder``, re-exported here): one JSON object per
  line, one file per split, schema declared by a ``JsonlConfig`` (presets
  ``gsm8k``, ``math500``, ``sft``, ``preference``). The directory comes from
  ``source_dir=``, else tfds's ``manual_dir``, else the copy bundled under
  ``w2s_jax/data/raw/``. Bad rows raise ``JsonlSchemaError`` naming
  ``file:line`` and the field, or with ``on_error="skip"`` are dropped and
  counted (``metadata.json``).

Examples keep the generation order (shuffling disabled): the synthetic
generator has already shuffled with its seed, and JSONL rows keep file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import tensorflow_datasets as tfds

from w2s_jax.data import synthetic
from w2s_jax.data.jsonl_builder import (
    _TRISTATE_KEY,
    FILE_FORMAT,
    GSM8K,
    MATH500,
    PREFERENCE,
    SFT,
    Field,
    JsonlConfig,
    JsonlSchemaError,
    W2sJsonl,
    _features,
    parse_jsonl_line,
)

__all__ = [
    "Records",
    "SyntheticConfig",
    "W2sSynthetic",
    "load_split",
    "prepare_jsonl",
    "prepare_synthetic",
    # Re-exported from jsonl_builder.
    "FILE_FORMAT",
    "GSM8K",
    "MATH500",
    "PREFERENCE",
    "SFT",
    "Field",
    "JsonlConfig",
    "JsonlSchemaError",
    "W2sJsonl",
    "parse_jsonl_line",
]


# ----------------------------------------------------------------- synthetic


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Knobs of ``W2sSynthetic``; see ``w2s_jax.data.synthetic`` for meaning.

  Attributes:
    seed: Data seed (test bucket, problem draws, distractors).
    modulus, ops, steps, distractors: ``synthetic.TaskConfig``.
    test_fraction: Share of the problem space reserved for test.
    num_train, num_test, num_pretrain: Problems per split.
    num_fact_lines, facts_per_line: Size of the bare-facts split.
    styles: Solution styles written for every train/test problem.
    fact_error_rate: Share of wrong facts in the train solver's table.
    slip_prob: Per-step slip probability of the train solver.
    error_seed: Seeds the wrong facts and the slips.
  """

  seed: int = 0
  modulus: int = 11
  ops: str = "+*"
  steps: int = 2
  distractors: int = 0
  test_fraction: float = 0.2
  num_train: int = 2000
  num_test: int = 500
  num_pretrain: int = 0
  num_fact_lines: int = 0
  facts_per_line: int = 8
  styles: tuple[str, ...] = ("terse",)
  fact_error_rate: float = 0.0
  slip_prob: float = 0.0
  error_seed: int = 0

  def __post_init__(self):
    self.styles = tuple(self.styles)
    _ = self.task  # validates modulus, ops, steps, distractors
    for style in self.styles:
      if style not in synthetic.STYLES:
        raise ValueError(
            f"styles: unknown style {style!r}; choose from"
            f" {sorted(synthetic.STYLES)}."
        )
    for knob in ("num_train", "num_test", "num_pretrain", "num_fact_lines"):
      if getattr(self, knob) < 0:
        raise ValueError(f"{knob}={getattr(self, knob)}: must be >= 0.")
    for knob in ("fact_error_rate", "slip_prob"):
      if not 0.0 <= getattr(self, knob) <= 1.0:
        raise ValueError(f"{knob}={getattr(self, knob)}: must be in [0, 1].")

  @property
  def task(self) -> synthetic.TaskConfig:
    return synthetic.TaskConfig(
        self.modulus, self.ops, self.steps, self.distractors
    )

  def knobs(self) -> dict[str, Any]:
    """Every field that changes the data."""
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return {
        f.name: getattr(self, f.name)
        for f in dataclasses.fields(self)
        if f.name not in base
    }

  @classmethod
  def make(cls, name: str | None = None, **knobs: Any) -> SyntheticConfig:
    """A config from knobs, named ``m11_k2_d0_s0_<hash>`` unless named."""
    fields = {f.name for f in dataclasses.fields(cls)} - {
        f.name for f in dataclasses.fields(tfds.core.BuilderConfig)
    }
    if unknown := set(knobs) - fields:
      raise ValueError(
          f"Unknown synthetic knob(s) {sorted(unknown)}; valid:"
          f" {sorted(fields)}."
      )
    config = cls(name="pending", **knobs)
    blob = json.dumps(config.knobs(), sort_keys=True).encode()
    config.name = name or (
        f"m{config.modulus}_k{config.steps}_d{config.distractors}"
        f"_s{config.seed}_{hashlib.sha1(blob).hexdigest()[:10]}"
    )
    return config


class W2sSynthetic(tfds.core.GeneratorBasedBuilder):
  """The synthetic modular-arithmetic reasoning task (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [SyntheticConfig(name="default")]

  def __init__(
      self,
      *,
      config: str | SyntheticConfig | None = None,
      data_dir: str | os.PathLike[str] | None = None,
      version: str | None = None,
      **knobs: Any,
  ):
    if knobs:
      if config is not None:
        raise ValueError(
            "Pass either config= or synthetic knobs as keyword arguments,"
            f" not both (got config={config!r} and {sorted(knobs)})."
        )
      config = SyntheticConfig.make(**knobs)
    super().__init__(
        config=config,
        data_dir=data_dir,
        version=version,
        file_format=FILE_FORMAT,
    )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Chains of modular arithmetic with checkable answers.",
        features=_features({
            "id": str,
            "spec": str,
            "question": str,
            "solution": str,
            "style": str,
            "answer": np.int64,
            "answer_text": str,
            "correct": np.bool_,
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(knobs=self.builder_config.knobs()),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated locally
    c = self.builder_config
    splits = {
        "train": self._generate_examples("train", c.num_train, c.styles),
        "test": self._generate_examples("test", c.num_test, c.styles),
    }
    if c.num_pretrain:
      splits["pretrain"] = self._generate_examples(
          "pretrain", c.num_pretrain, ("latent",)
      )
    if c.num_fact_lines:
      splits["facts"] = self._generate_facts()
    return splits

  def _generate_examples(self, split, n, styles):
    c = self.builder_config
    weak = split == "train"
    facts = None
    if weak and c.fact_error_rate > 0:
      gold = synthetic.FactTable.gold(c.modulus, c.ops)
      facts = gold.perturbed(c.fact_error_rate, c.error_seed)
    rows = synthetic.make_records(
        c.task,
        split,
        n,
        seed=c.seed,
        styles=styles,
        test_fraction=c.test_fraction,
        facts=facts,
        slip_prob=c.slip_prob if weak else 0.0,
        error_seed=c.error_seed,
    )
    for row in rows:
      yield f"{row['id']}/{row['style']}", row

  def _generate_facts(self):
    c = self.builder_config
    facts = synthetic.FactTable.gold(c.modulus, c.ops)
    rows = synthetic.fact_records(
        facts, c.num_fact_lines, per_line=c.facts_per_line, seed=c.seed
    )
    for row in rows:
      yield row["id"], row


# ------------------------------------------------------------------- reading


class Records(Sequence):
  """Random-access view of one split as plain Python dicts.

  Text comes back as ``str``, numbers as Python scalars, tri-state bools as
  ``True``/``False``/``None``. Works as a grain ``RandomAccessDataSource``.
  """

  def __init__(self, source: Any, tristate: Sequence[str] = ()):
    self._source = source
    self._tristate = frozenset(tristate)

  def __len__(self) -> int:
    return len(self._source)

  def _decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
      if isinstance(v, bytes):
        v = v.decode("utf-8")
      elif isinstance(v, np.generic):
        v = v.item()
      if k in self._tristate:
        v = None if v < 0 else bool(v)
      out[k] = v
    return out

  def __getitem__(self, index: int | slice) -> Any:
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records")
    return self._decode(self._source[index % len(self)])

  def __repr__(self) -> str:
    return f"Records(n={len(self)}, source={self._source!r})"


def load_split(
    source: tfds.core.DatasetBuilder | str | os.PathLike[str],
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> Records:
  """Reads a prepared split back, without TensorFlow.

  Args:
    source: A prepared builder, the directory of a prepared dataset version
      (``<data_dir>/w2s_synthetic/default/1.0.0``), or a registered name
      (``"w2s_synthetic/default"``) found under ``data_dir``.
    split: Split name; ``tfds`` slicing (``"train[:10%]"``) also works.
    data_dir: Root for a registered name.

  Returns:
    ``Records``, a sequence of dicts.
  """
  if isinstance(source, tfds.core.DatasetBuilder):
    builder = source
  elif isinstance(source, os.PathLike) or os.path.exists(source):
    if not (pathlib.Path(source) / "dataset_info.json").is_file():
      raise FileNotFoundError(
          f"{os.fspath(source)!r} holds no prepared dataset (no"
          " dataset_info.json); pass <data_dir>/<name>/<config>/<version>"
          " of a dataset made by prepare_synthetic or prepare_jsonl."
      )
    builder = tfds.builder_from_directory(os.fspath(source))
  else:
    builder = tfds.builder(source, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{builder.name}/{builder.builder_config_name} is not prepared in"
        f" {os.fspath(builder.data_dir)!r}; call download_and_prepare() (or"
        " prepare_synthetic / prepare_jsonl) first."
    )
  base = split.split("[")[0]
  if base not in builder.info.splits:
    raise ValueError(
        f"split={split!r} not in {builder.name}; available:"
        f" {sorted(builder.info.splits)}."
    )
  metadata = builder.info.metadata or {}
  return Records(
      builder.as_data_source(split=split), metadata.get(_TRISTATE_KEY, ())
  )


def prepare_synthetic(
    data_dir: str | os.PathLike[str],
    config: str | SyntheticConfig | None = None,
    **knobs: Any,
) -> W2sSynthetic:
  """Generates the synthetic dataset (if not already there) and returns its
  builder; ``knobs`` as in ``SyntheticConfig``."""
  builder = W2sSynthetic(config=config, data_dir=data_dir, **knobs)
  builder.download_and_prepare()
  return builder


def prepare_jsonl(
    data_dir: str | os.PathLike[str],
    config: str | JsonlConfig,
    source_dir: str | os.PathLike[str] | None = None,
    *,
    on_error: Literal["raise", "skip"] = "raise",
) -> W2sJsonl:
  """Converts a directory of JSONL files (if not already done) and returns
  its builder."""
  builder = W2sJsonl(
      config=config, source_dir=source_dir, on_error=on_error, data_dir=data_dir
  )
  builder.download_and_prepare()
  return builder
