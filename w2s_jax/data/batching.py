"""Rows, length bucketing and packing behind ``pipeline.make_dataset``.

``example_tokens`` cuts one example to its planned lengths and builds its
completion mask; ``pad_row`` pads it into a "right" or "left" row;
``SortedWindows`` sorts windows of the index stream by length (length
buckets); ``HostRows`` hands this process its block of every global batch,
with the batch's row length; ``packed`` packs rows first-fit with grain.
``pipeline`` composes them; its docstring defines the batches. The config
type lives in ``pipeline_config`` so this module never imports ``pipeline``.

Shape legend: B batch rows per process, L row length.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import grain
import numpy as np
from absl import logging

from w2s_jax.data.pipeline_config import Batch, PipelineConfig

# Our batch keys -> grain's packer outputs.
_PACKED_KEYS = {
    "tokens": "tokens",
    "positions": "tokens_positions",
    "segment_ids": "tokens_segment_ids",
    "completion_mask": "completion_mask",
}
# Per-global-batch caches are bounded; grain reads batches nearly in order.
_CACHE_SIZE = 256


def example_tokens(
    example: Mapping[str, Any], p: int, c: int, config: PipelineConfig
) -> tuple[np.ndarray, np.ndarray]:
  """Concatenated ids and completion mask of one (possibly cut) example."""
  prompt = np.asarray(example["prompt_ids"], np.int32)[:p]
  if config.prompt_only:
    return prompt, np.zeros(p, np.int32)
  completion = np.asarray(example["completion_ids"], np.int32)[:c]
  mask = np.concatenate([np.zeros(p, np.int32), np.ones(c, np.int32)])
  mask[0] = 0  # Nothing in the segment predicts its first token.
  return np.concatenate([prompt, completion]), mask


def pad_row(
    tokens: np.ndarray, mask: np.ndarray, length: int, config: PipelineConfig
) -> Batch:
  n = len(tokens)
  row = {
      "tokens": np.full(length, config.pad_id, np.int32),
      "positions": np.zeros(length, np.int32),
      "segment_ids": np.zeros(length, np.int32),
      "completion_mask": np.zeros(length, np.int32),
  }
  sl = slice(length - n, length) if config.mode == "left" else slice(0, n)
  row["tokens"][sl] = tokens
  row["positions"][sl] = np.arange(n, dtype=np.int32)
  row["segment_ids"][sl] = 1
  row["completion_mask"][sl] = mask
  return row


class SortedWindows(grain.MapDataset):
  """Sorts each window of ``window`` elements by length (stable).

  Elements are example indices; padding (-1) sorts last. Used for length
  bucketing: similar lengths land in the same batch.
  """

  def __init__(self, parent: grain.MapDataset, lengths, window: int):
    super().__init__(parent)
    self._lengths = lengths
    self._window = window
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self._parent)

  def _order(self, w: int) -> np.ndarray:
    if w not in self._cache:
      start = w * self._window
      stop = min(start + self._window, len(self._parent))
      items = np.array([self._parent[t] for t in range(start, stop)])
      keys = np.where(items < 0, np.iinfo(np.int64).max, self._lengths[items])
      if len(self._cache) > _CACHE_SIZE:
        self._cache.clear()
      self._cache[w] = items[np.argsort(keys, kind="stable")]
    return self._cache[w]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    w, r = divmod(index, self._window)
    return int(self._order(w)[r])


class HostRows(grain.MapDataset):
  """This process's rows of each global batch, with the batch's row length.

  The parent is the global stream of example indices (a multiple of the
  global batch when finite). Element j is ``(example index, L)`` for row
  ``j % B`` of this process's block in global batch ``j // B``; L is the same
  on every process because it is computed from the whole global batch.
  """

  def __init__(self, parent, config, shard, lengths):
    super().__init__(parent)
    self._b = config.batch_size
    self._shard = shard
    self._global = config.batch_size * shard.shard_count
    self._lengths = lengths
    self._buckets = config.length_buckets
    self._max_length = config.max_length
    self._cache: dict[int, int] = {}

  def __len__(self) -> int:
    n = len(self._parent)
    return n if n == sys.maxsize else n // self._shard.shard_count

  def _row_length(self, b: int) -> int:
    if self._buckets is None:
      return self._max_length
    if b not in self._cache:
      start = b * self._global
      items = [self._parent[start + t] for t in range(self._global)]
      longest = max((self._lengths[i] for i in items if i >= 0), default=1)
      if len(self._cache) > _CACHE_SIZE:
        self._cache.clear()
      self._cache[b] = next(x for x in self._buckets if x >= longest)
    return self._cache[b]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    b, r = divmod(index, self._b)
    g = b * self._global + self._shard.shard_index * self._b + r
    return int(self._parent[g]), self._row_length(b)


def stack(rows: Sequence[Batch]) -> Batch:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def packed(order, as_example, config, shard, read_options):
  """Packed rows: this process's stride of the stream, first-fit packed."""
  if config.num_epochs is not None and shard.shard_count > 1:
    # Each process packs its own stream, so row counts can differ.
    logging.warning(
        "packed + finite epochs on several processes: batch counts"
        " may differ per process; prefer num_epochs=None."
    )
  local = order[shard.shard_index :: shard.shard_count]

  def element(i):
    tokens, mask = as_example(i)
    return {"tokens": tokens, "completion_mask": mask}

  L = config.max_length
  ds = grain.experimental.FirstFitPackIterDataset(
      local.map(element).to_iter_dataset(read_options),
      length_struct={"tokens": L, "completion_mask": L},
      num_packing_bins=config.packing_bins or config.batch_size,
      shuffle_bins=False,
      padding_struct={"tokens": config.pad_id, "completion_mask": 0},
      max_sequences_per_bin=config.max_segments_per_row,
  )

  def rename(packed):
    return {k: packed[v].astype(np.int32) for k, v in _PACKED_KEYS.items()}

  def batch_fn(rows):  # Pads a final short batch with empty rows.
    empty = pad_row(np.zeros(0, np.int32), np.zeros(0, np.int32), L, config)
    return stack([*rows] + [empty] * (config.batch_size - len(rows)))

  return ds.map(rename).batch(
      config.batch_size, drop_remainder=config.drop_remainder, batch_fn=batch_fn
  )
