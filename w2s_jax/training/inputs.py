"""Training inputs from config: tokenizer, examples, batch iterators.

Host batches come out of the grain pipeline as ``[B, L]`` numpy arrays; the
trainer reshapes them to ``[M, B/M, L]`` micro-batches and puts them on the
mesh (batch on the data axes). Preference pairs use a small deterministic
batcher of their own (chosen and rejected must stay aligned row by row).

Sources (``config.data.source``):
  * ``jsonl``: SFT traces ``{prompt, completion[, correct]}``; ``data.filter``
    'all' (W2SR) or 'correct' (W2SR-P).
  * ``pairs_jsonl``: preference pairs ``{prompt, chosen, rejected}``.
  * ``synthetic``: gold traces of the synthetic task in ``data.style``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from w2s_jax.data import char_vocab, formatting, pipeline, synthetic, traces
from w2s_jax.data import tokenizers as tokenizers_lib
from w2s_jax.training import steps


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
        styles=(str(data.get("style", "terse")),),
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


def _row(
    ex: dict[str, np.ndarray], max_len: int, pad_id: int
) -> dict[str, np.ndarray]:
  """Right-padded row: tokens, positions, segment ids, completion mask."""
  p, c = np.asarray(ex["prompt_ids"]), np.asarray(ex["completion_ids"])
  ids = np.concatenate([p, c])[:max_len]
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


class PairBatches:
  """Deterministic, resumable batches of aligned chosen/rejected rows.

  Each epoch is a permutation drawn from ``seed + epoch``; the state is the
  (epoch, position) pair, so a restored iterator continues exactly.
  """

  def __init__(
      self, examples, batch_size: int, max_len: int, pad_id: int, seed: int
  ):
    if len(examples) < batch_size:
      raise ValueError(
          f"{len(examples)} preference pairs cannot fill one batch of"
          f" {batch_size}; lower train.batch_size."
      )
    self.examples, self.batch_size = examples, batch_size
    self.max_len, self.pad_id, self.seed = max_len, pad_id, seed
    self.epoch, self.pos = 0, 0

  def get_state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state: dict[str, int]) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.pos + self.batch_size > len(self.examples):
      self.epoch, self.pos = self.epoch + 1, 0
    order = np.random.default_rng(self.seed + self.epoch).permutation(
        len(self.examples)
    )
    idx = order[self.pos : self.pos + self.batch_size]
    self.pos += self.batch_size
    batch: dict[str, list] = {}
    for i in idx:
      for side in ("chosen", "rejected"):
        for k, v in _row(
            self.examples[i][side], self.max_len, self.pad_id
        ).items():
          batch.setdefault(f"{side}_{k}", []).append(v)
    return {k: np.stack(v) for k, v in batch.items()}


class GrainBatches:
  """The grain pipeline as an endless, resumable iterator of host batches."""

  def __init__(self, examples, config: pipeline.PipelineConfig):
    self._ds, self.stats = pipeline.make_dataset(examples, config)
    self._it = iter(self._ds)

  def get_state(self) -> Any:
    return self._it.get_state()

  def set_state(self, state: Any) -> None:
    self._it.set_state(state)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    return {k: v for k, v in batch.items() if k != "index"}


def make_batches(
    method: str, data: Any, tokenizer, batch_size: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
  """The host batch iterator for ``method`` (has get_state / set_state)."""
  max_len = int(data.max_len)
  pad = tokenizer.pad_id
  if method in steps.PAIR_METHODS:
    return PairBatches(
        pair_examples(data, tokenizer), batch_size, max_len, pad, seed
    )
  examples = sft_examples(data, tokenizer)
  config = pipeline.PipelineConfig(
      batch_size=batch_size,
      max_length=max_len,
      mode="packed" if data.get("pack", False) else "right",
      pad_id=pad,
      seed=seed,
      num_epochs=None,
      vocab_size=tokenizer.vocab_size,
  )
  return GrainBatches(examples, config)


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
