"""Host-side metric writing: JSONL + TensorBoard, process 0 only."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import jax
import numpy as np


def to_host(metrics: dict[str, Any]) -> dict[str, float]:
  """Device scalars -> Python floats (one transfer for the whole dict)."""
  host = jax.device_get(metrics)
  return {k: float(np.asarray(v)) for k, v in host.items()}


class MetricWriter:
  """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors
  scalars to TensorBoard (``tb/``). Non-zero processes write nothing.

  A run that starts at ``start_step`` (a resume, or 0) first drops the rows
  of steps after it, left by the interrupted run: they are written again,
  so ``metrics.jsonl`` keeps one row per step across any number of resumes.
  """

  def __init__(
      self, workdir: str, tensorboard: bool = True, start_step: int = 0
  ):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    truncate_after(self.path, start_step)
    if tensorboard:
      from tensorboardX import SummaryWriter  # noqa: PLC0415

      # purge_step: TensorBoard hides the interrupted run's events past the
      # restored step, as the JSONL rows are dropped.
      self._tb = SummaryWriter(
          os.path.join(workdir, "tb"), purge_step=start_step + 1
      )

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in metrics.items():
      row[k] = v if math.isfinite(v) else str(v)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row, sort_keys=True) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_after(path: str, step: int) -> int:
  """Drops the rows of ``path`` with ``step`` > ``step`` (temp + rename).

  Returns the number of rows dropped; the file is untouched when none are.
  A torn last line (a kill mid-write) is dropped too.
  """
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if int(row.get("step", 0)) <= step:
      keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) == len(lines) and all(a == b for a, b in zip(keep, lines)):
    return 0
  fd, tmp = tempfile.mkstemp(
      dir=os.path.dirname(path) or ".", prefix=".metrics.", suffix=".tmp"
  )
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.writelines(keep)
  os.replace(tmp, path)
  return len(lines) - len(keep)
