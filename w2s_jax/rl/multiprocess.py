"""Multi-process RL rollouts: sharded grading, combined rewards, agreement.

With P processes (``jax.distributed``) one RL step runs as follows:

* every process draws the same N prompts from its ``PromptSource`` (same
  seed, so the iterator states agree and resume is exact);
* the sampler is one SPMD program over the global mesh: the prompt rows are a
  global array (``put``) and each process's devices decode the rows they
  hold; the sampled tokens come back to every host (``fetch``);
* process p grades only its shard, prompts [p·N/P, (p+1)·N/P) with their G
  rollouts each (``shard``); the rewards are combined across processes
  (``gather_rows``), so group statistics, dynamic sampling and the batch are
  computed on the same full arrays as on one process;
* the update is the data-parallel step on the global batch; process 0 alone
  writes metrics, checkpoints (Orbax coordinates the rest) and the export.

Failures that happen on one process only (a grader that cannot be imported on
one host, a crashed reward pool) would leave the others waiting in the next
collective. ``agree`` turns them into the same clear error on every process:
each process reports its error message (or none) through one all-gather, and
all raise together before anything of the step is written.

Legend: P processes, N prompts, G group size, B = N·G rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

from w2s_jax import sharding
from w2s_jax.evals import rewards as rewards_lib

T = TypeVar("T")


class ProcessFailure(ValueError):
  """A step failed on some process; raised on every process alike (a
  ValueError, so ``main`` prints one line and exits non-zero)."""


def count() -> int:
  return jax.process_count()


def index() -> int:
  return jax.process_index()


def check_divisible(prompts: int, what: str = "rl.prompts_per_step") -> None:
  """Every process grades whole groups: N must divide by P."""
  p = count()
  if prompts % p:
    raise ValueError(
        f"{what}={prompts} is not divisible by the {p} processes of this job;"
        f" each process grades N/P prompts. Set --config.{what} to a multiple"
        f" of {p}."
    )


def shard(items: Sequence[T]) -> tuple[int, int]:
  """[lo, hi) of this process's share of ``items`` (contiguous, in order)."""
  n = len(items) // count()
  return index() * n, (index() + 1) * n


def put(x: np.ndarray, mesh) -> jax.Array:
  """A host array (the same on every process) as a global array with its
  rows on the batch axes; each device takes its rows from the local copy."""
  if mesh is None:
    return jax.numpy.asarray(x)
  names = ("batch",) + (None,) * (x.ndim - 1)
  spec = sharding.logical_to_spec(names, x.shape, mesh)
  s = jax.sharding.NamedSharding(mesh, spec)
  if count() == 1:
    return jax.device_put(x, s)
  return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])


def replicate_key(key: jax.Array, mesh) -> jax.Array:
  """A PRNG key (equal on every process) as a replicated global array: a
  multi-process jit takes global arrays only."""
  if count() == 1 or mesh is None:
    return key
  data = np.asarray(jax.random.key_data(key))
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  glob = jax.make_array_from_callback(data.shape, s, lambda idx: data[idx])
  return jax.random.wrap_key_data(glob, impl=jax.random.key_impl(key))


def replicate(tree: Any, mesh) -> Any:
  """Host-made arrays (equal on every process, e.g. LoRA adapters drawn from
  the same seed) replicated over the mesh as global arrays."""
  if mesh is None:
    return tree
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if count() == 1:
    return jax.device_put(tree, s)

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

  return jax.tree.map(one, tree)


def fetch(tree: Any) -> Any:
  """Global arrays -> full numpy values on every host."""
  if count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return multihost_utils.process_allgather(tree, tiled=True)


def gather_rows(x: np.ndarray) -> np.ndarray:
  """Per-process row blocks (equal shapes) -> their concatenation in process
  order, on every process."""
  if count() == 1:
    return x
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_json(obj: Any, size: int = 1 << 14) -> list[Any]:
  """One JSON-able value per process, in process order, on every process."""
  if count() == 1:
    return [obj]
  raw = json.dumps(obj).encode("utf-8")[: size - 1]
  buf = np.zeros(size, np.uint8)
  buf[: len(raw)] = np.frombuffer(raw, np.uint8)
  rows = gather_rows(buf[None])
  out = []
  for row in rows:
    n = int(np.argmax(row == 0)) if (row == 0).any() else size
    out.append(json.loads(bytes(row[:n]).decode("utf-8")))
  return out


def agree(fn: Callable[[], T], what: str) -> T:
  """Runs ``fn``; if it raised on ANY process, every process raises.

  The error names the failing process(es) and their messages, so the job
  stops everywhere with one clear line instead of hanging in a collective.
  """
  err, result = None, None
  try:
    result = fn()
  except Exception as e:  # noqa: BLE001 - re-raised on every process below
    err = f"{type(e).__name__}: {e}"
    if count() == 1:
      raise
  if count() == 1:
    return result
  errors = gather_json(err)
  bad = [(i, e) for i, e in enumerate(errors) if e is not None]
  if bad:
    detail = "; ".join(f"process {i}: {e}" for i, e in bad)
    raise ProcessFailure(
        f"{what} failed on {len(bad)} of {len(errors)} processes ({detail});"
        " every process stops, nothing of this step was written."
    )
  return result


def merge_reward_stats(
    stats: rewards_lib.RewardStats,
) -> rewards_lib.RewardStats:
  """The reward counters of every process, summed (the same on all)."""
  if count() == 1:
    return stats
  parts = gather_json(
      [stats.total, stats.correct, dict(stats.statuses), dict(stats.rules)]
  )
  out = rewards_lib.RewardStats()
  for total, correct, statuses, rules in parts:
    out.total += total
    out.correct += correct
    out.statuses.update(statuses)
    out.rules.update(rules)
  return out
