"""How examples become batches: ``PipelineConfig`` and the batch type.

Shared by ``pipeline`` (the public entry point, which re-exports these names)
and ``batching`` (rows, buckets, packing), so neither imports the other's
internals.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

Mode = Literal["right", "left", "packed"]
Truncation = Literal["drop", "truncate", "raise"]
Batch = dict[str, np.ndarray]

_POSITIVE_FIELDS = (
    "batch_size max_length num_epochs bucket_window packing_bins"
    " max_segments_per_row vocab_size"
).split()


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How examples become batches.

  Attributes:
    batch_size: Rows per batch on this process (B).
    max_length: Row length L (the largest of ``length_buckets``).
    mode: "right", "left" or "packed" (module docstring).
    prompt_only: Use only ``prompt_ids``; ``completion_ids`` may be absent.
    truncation: Over-long examples: "drop", "truncate" the completion
      (dropped if the prompt alone fills the row) or "raise".
    pad_id: Token id on padding.
    vocab_size: If set, every id must be in [0, vocab_size).
    shuffle: Shuffle, differently each epoch; the order depends on ``seed``
      only.
    seed: Shuffle seed.
    num_epochs: Passes over the data; None repeats forever.
    drop_remainder: Drop a final partial global batch instead of padding it
      with empty rows (segment 0, index -1).
    length_buckets: Unpacked modes: pad each batch to the smallest bucket
      holding its longest row, after sorting by length within windows of
      ``bucket_window`` global batches. None: L = ``max_length`` always.
    bucket_window: Global batches per sorting window.
    packing_bins: Packed mode: rows filled at once (default ``batch_size``);
      more bins, less padding.
    max_segments_per_row: Packed mode: cap on examples per row.
    num_threads: grain read threads (0 suits in-memory examples).
    prefetch_buffer_size: grain read-ahead, in elements.
  """

  batch_size: int
  max_length: int
  mode: Mode = "right"
  prompt_only: bool = False
  truncation: Truncation = "truncate"
  pad_id: int = 0
  vocab_size: int | None = None
  shuffle: bool = True
  seed: int = 0
  num_epochs: int | None = 1
  drop_remainder: bool = True
  length_buckets: tuple[int, ...] | None = None
  bucket_window: int = 8
  packing_bins: int | None = None
  max_segments_per_row: int | None = None
  num_threads: int = 0
  prefetch_buffer_size: int = 64

  def __post_init__(self):
    for name in _POSITIVE_FIELDS:
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    for name, allowed in (
        ("mode", ("right", "left", "packed")),
        ("truncation", ("drop", "truncate", "raise")),
    ):
      if getattr(self, name) not in allowed:
        raise ValueError(
            f"{name} must be one of {allowed}, got {getattr(self, name)!r}."
        )
    buckets = self.length_buckets
    if buckets is not None:  # Config files often hand over lists.
      buckets = tuple(buckets)
      object.__setattr__(self, "length_buckets", buckets)
    if buckets is not None and self.mode == "packed":
      raise ValueError(
          "length_buckets apply to 'right'/'left' modes; packed rows are"
          " always max_length long."
      )
    if buckets is not None and (
        list(buckets) != sorted(set(buckets))
        or buckets[-1:] != (self.max_length,)
        or buckets[0] < 1
    ):
      raise ValueError(
          "length_buckets must be a tuple of strictly increasing positive ints"
          f" ending at max_length={self.max_length}, got {buckets!r}."
      )
    if self.mode == "packed" and self.prompt_only:
      raise ValueError(
          "prompt_only is for generation prompts; use mode='left' (packing"
          " prompts for generation is not supported)."
      )
