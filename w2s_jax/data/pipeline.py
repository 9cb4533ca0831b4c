"""grain input pipeline: token examples -> fixed-shape host batches.

Examples are dicts with ``prompt_ids`` and ``completion_ids`` (1-D int token
ids; the completion ends with EOS / end-of-turn). Batches are dicts of numpy
int32 arrays:

* ``tokens`` [B, L]: ids, ``pad_id`` on padding.
* ``positions`` [B, L]: position in the example, restarting at every packed
  segment; 0 on padding.
* ``segment_ids`` [B, L]: 0 on padding, 1.. the example's slot in the row.
* ``completion_mask`` [B, L]: 1 on completion tokens incl. EOS, i.e. loss
  targets (docs/methods.md, "Notation": ``mask = completion_mask[:, 1:]``). An example's first
  token is never a target (nothing in its segment predicts it), so packed
  loss never crosses a boundary.
* ``index`` [B] (unpacked modes): input index of the row's example, -1 on
  padding rows, to map generations back to problems.

Modes: "right" (one example per row), "left" (padding first: generation
prompts, with ``prompt_only``) and "packed" (grain's deterministic greedy
first-fit packing). Over-long examples are dropped, truncated (completion
cut) or rejected, and counted in :class:`PipelineStats`.

Order: kept examples are shuffled per epoch with ``seed``, repeated, then
split across processes. Unpacked modes form a *global* batch of
``batch_size * shard_count`` rows and give each process a contiguous block,
so every process yields the same number of equally shaped batches (finite
streams padded with empty rows, or cut by ``drop_remainder``; length buckets
chosen per global batch). Iterator ``get_state()`` / ``set_state()`` are
JSON-serialisable and resume exactly. :func:`to_global_array` makes global
``jax.Array``s with the batch on the mesh's data axes. Rows, bucketing and
packing are built by the internal ``batching`` module.

Shape legend: B batch rows per process, L row length.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import logging

from w2s_jax.data import batching
from w2s_jax.data.pipeline_config import (  # Re-exported: the public API.
    PipelineConfig,
)

_PAD_INDEX = -1


@dataclasses.dataclass(frozen=True)
class PipelineStats:
  """What the length policy did, over all input examples (all processes).

  Attributes:
    num_examples: Examples in the input.
    num_kept: Examples that enter the pipeline (including truncated ones).
    num_truncated: Kept examples whose completion was cut.
    num_dropped: Examples left out for length.
    num_batches: Batches this process yields, when finite and known (None for
      infinite streams and packed mode).
  """

  num_examples: int
  num_kept: int
  num_truncated: int
  num_dropped: int
  num_batches: int | None


def _ids(example: Any, key: str, i: int, config: PipelineConfig) -> np.ndarray:
  if not isinstance(example, Mapping) or key not in example:
    found = sorted(example) if isinstance(example, Mapping) else example
    raise ValueError(
        f"example {i} has no '{key}' (got {found!r:.60}); examples are dicts"
        " of token id lists 'prompt_ids' and 'completion_ids'."
    )
  arr = np.asarray(example[key])
  if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(
        f"example {i}: '{key}' must be a 1-D sequence of int token ids, got"
        f" dtype {arr.dtype} and shape {arr.shape}."
    )
  vocab = config.vocab_size or np.iinfo(np.int32).max
  if arr.size and (arr.min() < 0 or arr.max() >= vocab):
    raise ValueError(
        f"example {i}: '{key}' has ids outside [0, {vocab}) (min"
        f" {arr.min()}, max {arr.max()})."
    )
  return arr


def plan_lengths(
    examples: Sequence[Mapping[str, Any]], config: PipelineConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, PipelineStats]:
  """Validates every example and applies the length policy.

  Args:
    examples: Random-access examples (a list, or any grain data source).
    config: Pipeline settings.

  Returns:
    ``(kept, prompt_len, completion_len, stats)``: kept indices in input
    order; per-example lengths after truncation (0 when dropped).

  Raises:
    ValueError: On a malformed example, or an over-long one with
      ``truncation="raise"``, naming its index.
  """
  n = len(examples)
  prompt_len = np.zeros(n, np.int64)
  completion_len = np.zeros(n, np.int64)
  kept, num_truncated, num_dropped = [], 0, 0
  limit = config.max_length
  for i in range(n):
    ex = examples[i]
    p = len(_ids(ex, "prompt_ids", i, config))
    c = 0 if config.prompt_only else len(_ids(ex, "completion_ids", i, config))
    if (p if config.prompt_only else c) == 0:
      raise ValueError(
          f"example {i}: '{'prompt' if config.prompt_only else 'completion'}"
          "_ids' is empty; it needs at least one token (a completion ends"
          " with EOS)."
      )
    if p + c > limit:
      if config.truncation == "raise":
        raise ValueError(
            f"example {i}: {p} prompt + {c} completion tokens exceed"
            f" max_length={limit}; raise max_length or set truncation to"
            " 'drop' or 'truncate'."
        )
      if (
          config.truncation == "truncate"
          and not config.prompt_only
          and p < limit
      ):
        c = limit - p
        num_truncated += 1
      else:
        num_dropped += 1
        continue
    kept.append(i)
    prompt_len[i], completion_len[i] = p, c
  stats = PipelineStats(n, len(kept), num_truncated, num_dropped, None)
  if num_truncated or num_dropped:
    logging.warning("pipeline: over max_length=%d: %s", limit, stats)
  return np.asarray(kept, np.int64), prompt_len, completion_len, stats


def make_dataset(
    examples: Sequence[Mapping[str, Any]],
    config: PipelineConfig,
    *,
    shard: grain.sharding.ShardOptions | None = None,
) -> tuple[grain.IterDataset, PipelineStats]:
  """Builds the batched grain dataset for this process.

  Args:
    examples: Random-access examples (list or grain data source) with
      ``prompt_ids`` and ``completion_ids``; read once up front to validate
      and measure them, then lazily.
    config: Pipeline settings.
    shard: Which share this process reads; defaults to
      ``grain.sharding.ShardByJaxProcess()`` (``jax.process_index()`` of
      ``jax.process_count()``).

  Returns:
    ``(dataset, stats)``. ``iter(dataset)`` is a grain iterator whose
    ``get_state()`` / ``set_state()`` checkpoint the position exactly.

  Raises:
    ValueError: On malformed examples, or when nothing fits into a batch.
  """
  shard = shard or grain.sharding.ShardByJaxProcess()
  kept, prompt_len, completion_len, stats = plan_lengths(examples, config)
  if len(kept) == 0:
    raise ValueError(
        f"no example fits max_length={config.max_length} (all"
        f" {stats.num_examples} were dropped); raise max_length."
    )
  order = grain.MapDataset.source(kept)
  if config.shuffle:
    order = order.shuffle(config.seed)
  if config.num_epochs != 1:
    order = order.repeat(config.num_epochs)
  read_options = grain.ReadOptions(
      num_threads=config.num_threads,
      prefetch_buffer_size=config.prefetch_buffer_size,
  )

  def as_example(i):
    p, c = prompt_len[i], completion_len[i]
    return batching.example_tokens(examples[i], p, c, config)

  if config.mode == "packed":
    return (
        batching.packed(order, as_example, config, shard, read_options),
        stats,
    )

  global_batch = config.batch_size * shard.shard_count
  num_batches = None
  if config.num_epochs is not None:
    total = len(order)
    if config.drop_remainder:
      num_batches = total // global_batch
      if num_batches == 0:
        raise ValueError(
            f"{total} examples make no full global batch of {global_batch}"
            f" rows ({config.batch_size} x {shard.shard_count} processes);"
            " set drop_remainder=False or lower batch_size."
        )
      order = order[: num_batches * global_batch]
    else:
      num_batches = -(-total // global_batch)
      padding = num_batches * global_batch - total
      if padding:
        pads = grain.MapDataset.source([_PAD_INDEX] * padding)
        order = grain.MapDataset.concatenate([order, pads])
  length = prompt_len + completion_len
  if config.length_buckets is not None:
    order = batching.SortedWindows(
        order, length, config.bucket_window * global_batch
    )
  rows = batching.HostRows(order, config, shard, length)

  def to_row(item):
    i, row_length = item
    empty = (np.zeros(0, np.int32),) * 2
    row = batching.pad_row(
        *(empty if i < 0 else as_example(i)), row_length, config
    )
    row["index"] = np.int32(i)
    return row

  ds = rows.map(to_row).to_iter_dataset(read_options)
  ds = ds.batch(
      config.batch_size, drop_remainder=False, batch_fn=batching.stack
  )
  stats = dataclasses.replace(stats, num_batches=num_batches)
  return ds, stats


def to_global_array(
    host_batch: Any,
    mesh: jax.sharding.Mesh,
    spec: jax.sharding.PartitionSpec,
) -> Any:
  """Assembles per-process batches into global, batch-sharded jax.Arrays.

  Each process passes the rows of the batch shards its devices hold; the
  batch dim is split over the mesh axes in ``spec[0]``
  (``jax.make_array_from_process_local_data``).

  Args:
    host_batch: Pytree of numpy arrays with the local batch leading.
    mesh: Device mesh.
    spec: Spec of the leading dims, e.g. ``P(('data', 'fsdp'))``; entries
      past a leaf's rank are ignored, so one spec serves [B] and [B, L].

  Returns:
    The same pytree of ``jax.Array``s.

  Raises:
    ValueError: If ``spec`` names an axis not in the mesh, or the local batch
      does not split evenly over this process's data shards.
  """
  if len(spec) == 0:
    raise ValueError(
        "spec must shard the batch (leading) dimension, e.g. P('data'); got"
        " an empty PartitionSpec."
    )
  lead = spec[0]
  axes = () if lead is None else (lead,) if isinstance(lead, str) else lead
  unknown = [a for a in axes if a not in mesh.axis_names]
  if unknown:
    raise ValueError(
        f"spec {spec} names axes {unknown} that the mesh does not have (mesh"
        f" axes {mesh.axis_names})."
    )
  # Distinct batch slices held by this process's devices.
  dims = [mesh.axis_names.index(a) for a in axes]
  shards = len({
      tuple(pos[d] for d in dims)
      for pos, device in np.ndenumerate(mesh.devices)
      if device.process_index == jax.process_index()
  })

  def convert(path, x):
    x = np.asarray(x)
    name = jax.tree_util.keystr(path)
    if x.ndim == 0:
      raise ValueError(f"batch leaf {name} is a scalar; it needs a batch dim.")
    if x.shape[0] % shards:
      raise ValueError(
          f"batch leaf {name} has {x.shape[0]} rows on this process, not"
          f" divisible by its {shards} data shards (mesh axes {axes}); use a"
          f" per-process batch_size that is a multiple of {shards}."
      )
    leaf_spec = jax.sharding.PartitionSpec(*tuple(spec)[: x.ndim])
    sharding = jax.sharding.NamedSharding(mesh, leaf_spec)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(convert, host_batch)
