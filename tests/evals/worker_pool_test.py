"""Tests for w2s_jax.evals.worker_pool: deadlines, crashes, parallelism.

Items are stdlib functions (picklable by reference in a fresh interpreter):
``time.sleep`` hangs in a way a signal could interrupt, ``pow`` on a huge
exponent hangs inside C where no signal handler runs, ``os._exit`` kills the
worker outright.
"""

import math
import operator
import os
import time

import pytest

from w2s_jax.evals import worker_pool


@pytest.fixture(scope="module")
def pool():
  with worker_pool.WorkerPool(num_workers=2, timeout_s=1.0) as p:
    yield p


def test_results_in_input_order(pool):
  results = pool.map(operator.neg, [(i,) for i in range(10)])
  assert [r.value for r in results] == [-i for i in range(10)]
  assert all(r.status == "ok" for r in results)


def test_items_run_in_parallel(pool):
  start = time.monotonic()
  results = pool.map(time.sleep, [(0.5,)] * 4)
  elapsed = time.monotonic() - start
  assert [r.status for r in results] == ["ok"] * 4
  # Two workers: about 1.0 s, where one at a time would take 2.0 s.
  assert elapsed < 1.8, elapsed


@pytest.mark.parametrize(
    "fn, args",
    [
        (time.sleep, (30,)),  # Interruptible hang.
        (pow, (10, 10**10)),  # Uninterruptible C-level big-integer work.
    ],
)
def test_overrunning_item_is_killed_at_its_deadline(pool, fn, args):
  restarts = pool.stats["restarts"]
  start = time.monotonic()
  results = pool.map(fn, [args, (2, 3)] if fn is pow else [args, (0,)])
  elapsed = time.monotonic() - start
  assert results[0].status == "timeout"
  assert results[0].value is None
  assert 1.0 <= results[0].elapsed_s < 1.0 + 1.0
  assert elapsed < 1.0 + 2.0, elapsed
  # The other item is unaffected, and the killed worker was replaced.
  assert results[1].status == "ok"
  assert pool.stats["restarts"] == restarts + 1
  assert pool.map(operator.add, [(2, 3)])[0].value == 5


def test_per_call_timeout_overrides_default(pool):
  result = pool.map(time.sleep, [(0.6,)], timeout_s=0.3)[0]
  assert result.status == "timeout"
  assert result.elapsed_s < 0.3 + 1.0
  assert pool.map(time.sleep, [(1.2,)], timeout_s=5.0)[0].status == "ok"
  with pytest.raises(ValueError, match="timeout_s must be > 0"):
    pool.map(abs, [(1,)], timeout_s=0.0)


def test_crash_and_error_are_outcomes_not_exceptions(pool):
  results = pool.map(os._exit, [(3,)])
  assert results[0].status == "crash"
  assert "exit code 3" in results[0].error
  results = pool.map(math.sqrt, [(-1.0,), (4.0,)])
  assert results[0].status == "error"
  assert "ValueError" in results[0].error
  assert results[1] == worker_pool.TaskResult(
      "ok", 2.0, None, results[1].elapsed_s
  )


def test_unpicklable_function_is_an_error(pool):
  result = pool.map(lambda x: x, [(1,)])[0]
  assert result.status == "error"
  assert "pickle" in result.error.lower()


def test_memory_limit_turns_runaway_allocation_into_error():
  with worker_pool.WorkerPool(1, timeout_s=20.0, memory_limit_mb=512) as p:
    result = p.map(bytearray, [(4 * 2**30,)])[0]
    assert result.status == "error"
    assert "MemoryError" in result.error
    # The worker survived its MemoryError.
    assert p.stats["restarts"] == 0
    assert p.map(len, [("abc",)])[0].value == 3


def test_forkserver_start_method():
  with worker_pool.WorkerPool(1, start_method="forkserver") as p:
    assert p.map(operator.mul, [(6, 7)])[0].value == 42


def test_close_stops_workers_and_is_idempotent():
  p = worker_pool.WorkerPool(2, timeout_s=1.0)
  processes = [w.process for w in p._workers]
  assert all(proc.is_alive() for proc in processes)
  p.close()
  p.close()
  assert not any(proc.is_alive() for proc in processes)
  with pytest.raises(RuntimeError, match="closed"):
    p.map(abs, [(1,)])


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_workers must be >= 1"):
    worker_pool.WorkerPool(0)
  with pytest.raises(ValueError, match="timeout_s must be > 0"):
    worker_pool.WorkerPool(1, timeout_s=0)
  with pytest.raises(ValueError, match="'fork' is unsafe"):
    worker_pool.WorkerPool(1, start_method="fork")


def test_unimportable_preload_fails_loudly():
  with pytest.raises(RuntimeError, match="keep failing to start"):
    worker_pool.WorkerPool(1, preload=("no_such_module_w2s",))
