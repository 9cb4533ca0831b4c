"""Training inputs from config: tokenizer, examples, batch iterators.

Host batches are numpy ``[B, L]`` arrays; the trainer reshapes them to
``[M, B/M, L]`` micro-batches and puts them on the mesh (batch on the data
axes). Three batchers, all endless and resumable (``get_state`` /
``set_state``):

* ``GrainBatches``: the grain pipeline (SFT, fused distillation; packing).
* ``PairBatches``: aligned chosen/rejected rows (REDI, DPO, SimPO).
* ``TopKBatches``: rows plus the teacher's cached top-k ids and log-probs
  (distillation from a cache, SSB), checked token by token against the data.

Multi-process: every batcher builds the *global* batch and each process
keeps its rows (``process_rows``), laid out so that after ``split_micro``
and ``jax.make_array_from_process_local_data`` micro-batch m holds global
rows ``[m·G/M, (m+1)·G/M)`` on any process count. P processes therefore see
exactly the batches, micro-batches and row order of one process, and their
metrics agree. The host cost is building G rows instead of G/P (cheap next
to the step; the tokenized examples are on every host anyway).

Sources (``config.data.source``):
  * ``jsonl``: SFT traces ``{prompt, completion[, correct]}``; ``data.filter``
    'all' (W2SR) or 'correct' (W2SR-P).
  * ``pairs_jsonl``: preference pairs ``{prompt, chosen, rejected}``.
  * ``synthetic``: gold traces of the synthetic task in ``data.style``.

Shape legend: G global batch, B rows on this process, M micro-batches,
L row length, K cached top-k entries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from w2s_jax import methods
from w2s_jax.data import (
    char_vocab,
    formatting,
    pipeline,
    synthetic,
    topk_cache,
    traces,
)
from w2s_jax.data import tokenizers as tokenizers_lib


def load_tokenizer(spec: str, workdir: str) -> tokenizers_lib.Tokenizer:
  """``'char'`` builds the synthetic task's char vocab into the workdir."""
  if spec == "char":
    path = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
      char_vocab.save_char_tokenizer(path)
    return tokenizers_lib.load_tokenizer(path)
  return tokenizers_lib.load_tokenizer(spec)


def task_config(data: Any) -> synthetic.TaskConfig:
  return synthetic.TaskConfig(
      modulus=int(data.get("modulus", 11)),
      ops=str(data.get("ops", "+*")),
      steps=int(data.get("steps", 2)),
      distractors=int(data.get("distractors", 0)),
  )


def synthetic_styles(data: Any) -> tuple[str, ...]:
  """``data.style`` as a tuple: ``"terse"``, or a mixture ``"running,postfix"``.

  Each problem is written once per listed style, so a style listed twice
  gets twice the weight (``"running,running,postfix"``: 2:1).
  """
  spec = str(data.get("style", "terse"))
  styles = tuple(s.strip() for s in spec.split(","))
  unknown = [s for s in styles if s not in synthetic.STYLES]
  if unknown:
    raise ValueError(
        f"data.style={spec!r}: unknown style(s) {unknown}; give one of"
        f" {sorted(synthetic.STYLES)} or a comma-separated mixture of them."
    )
  return styles


def sft_examples(data: Any, tokenizer) -> list[dict[str, np.ndarray]]:
  """(prompt_ids, completion_ids) examples for SFT / distillation."""
  fmt = formatting.get_format(str(data.get("prompt_format", "raw")))
  source = data.source
  if source == "jsonl":
    result = traces.read_sft(
        data.path, on_error=str(data.get("on_error", "raise"))
    )
    mode = {"all": "w2sr", "correct": "w2sr_p"}[str(data.get("filter", "all"))]
    records = traces.select_traces(result.records, mode)
    pairs = [(r.prompt, r.completion) for r in records]
  elif source == "synthetic":
    task = task_config(data)
    rate = float(data.get("fact_error_rate", 0.0))
    facts = None
    if rate > 0:
      facts = synthetic.FactTable.gold(task.modulus, task.ops).perturbed(
          rate, int(data.get("error_seed", 0))
      )
    rows = synthetic.make_records(
        task,
        str(data.get("split", "train")),
        int(data.num_examples),
        seed=int(data.get("seed", 0)),
        styles=synthetic_styles(data),
        facts=facts,
        slip_prob=float(data.get("slip_prob", 0.0)),
        error_seed=int(data.get("error_seed", 0)),
    )
    if str(data.get("filter", "all")) == "correct":
      rows = [r for r in rows if r["correct"]]
    pairs = [(r["question"], r["solution"]) for r in rows]
  else:
    raise ValueError(
        f"data.source {source!r} cannot feed an SFT/distill run; use 'jsonl'"
        " or 'synthetic'."
    )
  if not pairs:
    raise ValueError(
        f"no training examples from data.source={source!r}"
        f" (path={data.get('path')!r}, filter={data.get('filter')!r})."
    )
  return [formatting.build_example(tokenizer, p, c, fmt) for p, c in pairs]


def pair_examples(data: Any, tokenizer) -> list[dict[str, np.ndarray]]:
  """Chosen/rejected examples sharing one prompt."""
  if data.source != "pairs_jsonl":
    raise ValueError(
        "preference methods need data.source='pairs_jsonl', got"
        f" {data.source!r}."
    )
  fmt = formatting.get_format(str(data.get("prompt_format", "raw")))
  result = traces.read_preferences(
      data.path, on_error=str(data.get("on_error", "raise"))
  )
  out = []
  for r in result.records:
    w = formatting.build_example(tokenizer, r.prompt, r.chosen, fmt)
    l = formatting.build_example(tokenizer, r.prompt, r.rejected, fmt)
    out.append({"chosen": w, "rejected": l})
  if not out:
    raise ValueError(f"no preference pairs in {data.path}.")
  return out


def example_ids(ex: dict[str, np.ndarray], max_len: int) -> np.ndarray:
  """Prompt || completion ids cut to ``max_len`` (the row the model sees)."""
  ids = np.concatenate([ex["prompt_ids"], ex["completion_ids"]])
  return ids[:max_len].astype(np.int32)


def _row(
    ex: dict[str, np.ndarray], max_len: int, pad_id: int
) -> dict[str, np.ndarray]:
  """Right-padded row: tokens, positions, segment ids, completion mask."""
  p = np.asarray(ex["prompt_ids"])
  ids = example_ids(ex, max_len)
  n = len(ids)
  row = {
      "tokens": np.full(max_len, pad_id, np.int32),
      "positions": np.zeros(max_len, np.int32),
      "segment_ids": np.zeros(max_len, np.int32),
      "completion_mask": np.zeros(max_len, np.int32),
  }
  row["tokens"][:n] = ids
  row["positions"][:n] = np.arange(n)
  row["segment_ids"][:n] = 1
  row["completion_mask"][len(p) : n] = 1
  return row


def process_rows(
    global_batch: int,
    micro_batches: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
  """Indices of the global batch's rows this process feeds, in order.

  Process p holds, for every micro-batch m, the rows
  ``m·G/M + p·b + [0, b)`` with ``b = G/(M·P)``, so the global micro-batch m
  assembled from all processes is rows ``[m·G/M, (m+1)·G/M)``: the same as
  on one process.

  Raises:
    ValueError: if G is not divisible by M·P, or p is not in [0, P).
  """
  g, m, p, n = (
      int(global_batch),
      int(micro_batches),
      int(process_index),
      int(process_count),
  )
  if n < 1 or not 0 <= p < n:
    raise ValueError(f"process_index={p} must be in [0, process_count={n}).")
  if m < 1 or g % (m * n):
    raise ValueError(
        f"train.batch_size {g} must be divisible by train.micro_batches={m}"
        f" x {n} processes; pick a multiple of {m * n}."
    )
  b = g // (m * n)
  return np.concatenate([
      np.arange(k * (g // m) + p * b, k * (g // m) + (p + 1) * b)
      for k in range(m)
  ])


class _IndexBatches:
  """Deterministic, resumable batches of examples; subclasses build rows.

  Each epoch is a permutation drawn from ``seed + epoch`` of the example
  indices; a global batch is the next G of them (an epoch's remainder is
  skipped). The state is (epoch, position), so a restored iterator continues
  exactly. ``rows`` picks this process's rows of the global batch.
  """

  what = "examples"

  def __init__(self, num_examples: int, global_batch: int, seed: int, rows):
    if num_examples < global_batch:
      raise ValueError(
          f"{num_examples} {self.what} cannot fill one global batch of"
          f" {global_batch}; lower train.batch_size."
      )
    self.num_examples, self.global_batch = num_examples, global_batch
    self.seed, self.rows = seed, np.asarray(rows)
    self.epoch, self.pos = 0, 0

  def get_state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state: dict[str, int]) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

  def __iter__(self):
    return self

  def _next_indices(self) -> np.ndarray:
    if self.pos + self.global_batch > self.num_examples:
      self.epoch, self.pos = self.epoch + 1, 0
    order = np.random.default_rng(self.seed + self.epoch).permutation(
        self.num_examples
    )
    idx = order[self.pos : self.pos + self.global_batch]
    self.pos += self.global_batch
    return idx[self.rows]

  def _build(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def __next__(self) -> dict[str, np.ndarray]:
    return self._build(self._next_indices())


class PairBatches(_IndexBatches):
  """Aligned chosen/rejected rows (chosen and rejected stay row by row)."""

  what = "preference pairs"

  def __init__(
      self,
      examples,
      batch_size: int,
      max_len: int,
      pad_id: int,
      seed: int,
      rows=None,
  ):
    rows = np.arange(batch_size) if rows is None else rows
    super().__init__(len(examples), batch_size, seed, rows)
    self.examples, self.max_len, self.pad_id = examples, max_len, pad_id

  def _build(self, indices):
    batch: dict[str, list] = {}
    for i in indices:
      for side in ("chosen", "rejected"):
        row = _row(self.examples[i][side], self.max_len, self.pad_id)
        for k, v in row.items():
          batch.setdefault(f"{side}_{k}", []).append(v)
    return {k: np.stack(v) for k, v in batch.items()}


class TopKBatches(_IndexBatches):
  """Rows plus the teacher's cached top-k, aligned with the row's tokens.

  ``teacher_topk_ids`` / ``teacher_topk_logprobs`` ``[B, L, K]``: entry t is
  the teacher's distribution for the token at t + 1 (the row of
  ``logits[:, t]``, as in the cache). The tail mass ``1 − Σ_K p`` of docs/methods.md, "Divergences" is implied by the cached full-vocabulary log-probs; the loss forms
  it. Each row's cached tokens must equal the data's tokens (cut to
  ``max_len``) and its prompt length, checked as the row is built.
  """

  def __init__(
      self,
      examples,
      reader: topk_cache.TopKCacheReader,
      batch_size: int,
      max_len: int,
      pad_id: int,
      seed: int,
      rows=None,
  ):
    if len(reader) != len(examples):
      raise ValueError(
          f"top-k cache {reader.path!r} has {len(reader)} examples but the"
          f" data config gives {len(examples)}; the cache does not belong to"
          " this data. Rebuild it with job='topk_cache' (or 'ssb_data') on"
          " the same data section."
      )
    rows = np.arange(batch_size) if rows is None else rows
    super().__init__(len(examples), batch_size, seed, rows)
    self.examples, self.reader = examples, reader
    self.max_len, self.pad_id = max_len, pad_id

  def _check(self, i: int, cached: topk_cache.TopKExample) -> None:
    want = example_ids(self.examples[i], self.max_len)
    got = cached.token_ids[: self.max_len]
    p = min(len(self.examples[i]["prompt_ids"]), len(want))
    if not np.array_equal(got, want) or cached.prompt_length != p:
      diff = next(
          (t for t, (a, b) in enumerate(zip(got, want)) if a != b),
          min(len(got), len(want)),
      )
      raise ValueError(
          f"top-k cache {self.reader.path!r} example {i} is misaligned with"
          f" the data: tokens differ from position {diff} (cache length"
          f" {len(cached.token_ids)}, prompt {cached.prompt_length}; data"
          f" length {len(want)}, prompt {p}). Rebuild the cache from this"
          " data config (same data section, tokenizer and prompt_format)."
      )

  def _build(self, indices):
    cached = self.reader.read_many([int(i) for i in indices])
    k = self.reader.header.k
    rows = []
    for i, ex in zip(indices, cached):
      self._check(int(i), ex)
      row = _row(self.examples[i], self.max_len, self.pad_id)
      n = min(len(ex.token_ids), self.max_len)
      row["teacher_topk_ids"] = np.zeros((self.max_len, k), np.int32)
      row["teacher_topk_logprobs"] = np.zeros((self.max_len, k), np.float32)
      row["teacher_topk_ids"][:n] = ex.topk_ids[:n]
      row["teacher_topk_logprobs"][:n] = ex.topk_logprobs[:n]
      rows.append(row)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class GrainBatches:
  """The grain pipeline as an endless, resumable iterator of host batches.

  The pipeline builds global batches (one shard); ``rows`` picks this
  process's rows of each.
  """

  def __init__(self, examples, config: pipeline.PipelineConfig, rows=None):
    self._ds, self.stats = pipeline.make_dataset(
        examples, config, shard=grain.sharding.ShardOptions(0, 1)
    )
    self._it = iter(self._ds)
    self.rows = None if rows is None else np.asarray(rows)

  def get_state(self) -> Any:
    return self._it.get_state()

  def set_state(self, state: Any) -> None:
    self._it.set_state(state)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    return {
        k: v if self.rows is None else v[self.rows]
        for k, v in batch.items()
        if k != "index"
    }


def open_topk_cache(data: Any, tokenizer) -> topk_cache.TopKCacheReader:
  """The cache at ``data.topk_cache``, checked against the tokenizer.

  Raises:
    ValueError: no path given, or the cache's vocabulary or tokenizer
      fingerprint differs from ``tokenizer``'s.
    FileNotFoundError: the file does not exist.
  """
  path = str(data.get("topk_cache", "") or "")
  if not path:
    raise ValueError(
        "this method reads a teacher top-k cache: set data.topk_cache to the"
        " file written by job='topk_cache' (configs/distill.py:make_cache)"
        " or job='ssb_data'."
    )
  reader = topk_cache.TopKCacheReader(path)
  h = reader.header
  if h.vocab_size != tokenizer.vocab_size:
    raise ValueError(
        f"top-k cache {path!r} was written with vocab_size={h.vocab_size} but"
        f" the tokenizer has {tokenizer.vocab_size}; rebuild the cache with"
        " this tokenizer (data.tokenizer)."
    )
  if h.tokenizer_fingerprint != tokenizer.fingerprint():
    raise ValueError(
        f"top-k cache {path!r} was written with another tokenizer (its"
        " fingerprint differs from data.tokenizer's); rebuild the cache with"
        " this tokenizer."
    )
  return reader


def make_batches(
    method: str,
    data: Any,
    tokenizer,
    batch_size: int,
    seed: int,
    *,
    micro_batches: int = 1,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's host batches for ``method`` (has get_state / set_state).

  Args:
    method: the training method; its spec's ``data`` kind picks the batcher
      (pairs, token sequences with a teacher top-k cache, or tokens).
    data: the ``data`` config section.
    tokenizer: the student tokenizer.
    batch_size: the GLOBAL batch size G (all processes together).
    seed: shuffle seed.
    micro_batches: M, for the row layout (module docstring).
    process_index: this process (default ``jax.process_index()``).
    process_count: processes (default ``jax.process_count()``).

  Returns:
    An iterator of ``[G/P, ...]`` numpy batches.
  """
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  rows = process_rows(batch_size, micro_batches, p, n)
  max_len = int(data.max_len)
  pad = tokenizer.pad_id
  kind = methods.get(method, job="train").data
  if kind == "pairs":
    return PairBatches(
        pair_examples(data, tokenizer), batch_size, max_len, pad, seed, rows
    )
  examples = sft_examples(data, tokenizer)
  if kind == "topk":
    reader = open_topk_cache(data, tokenizer)
    return TopKBatches(examples, reader, batch_size, max_len, pad, seed, rows)
  config = pipeline.PipelineConfig(
      batch_size=batch_size,
      max_length=max_len,
      mode="packed" if data.get("pack", False) else "right",
      pad_id=pad,
      seed=seed,
      num_epochs=None,
      vocab_size=tokenizer.vocab_size,
  )
  return GrainBatches(examples, config, None if n == 1 else rows)


def split_micro(
    batch: dict[str, np.ndarray], micro_batches: int
) -> dict[str, np.ndarray]:
  """[B, ...] -> [M, B/M, ...]."""
  out = {}
  for k, v in batch.items():
    b = v.shape[0]
    if b % micro_batches:
      raise ValueError(
          f"batch size {b} is not divisible by"
          f" train.micro_batches={micro_batches}."
      )
    out[k] = v.reshape(micro_batches, b // micro_batches, *v.shape[1:])
  return out
