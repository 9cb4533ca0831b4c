"""Worker processes that run untrusted computations with a hard deadline each.

Graders run SymPy/Math-Verify (and user reward functions) on model output.
Some inputs never finish: ``9^{9^{9^{9}}}`` sends SymPy into big-integer
arithmetic inside C, where no signal handler runs, so in-process timeouts
(``signal.alarm``) are not enough. :class:`WorkerPool` runs each item in a
separate process and enforces the deadline from the parent:

* an item's clock starts when it is handed to an idle, fully started worker
  (module imports are not charged to it);
* a worker past its deadline is killed (SIGKILL) and replaced; the item's
  outcome is ``"timeout"``;
* a worker that dies (segfault, ``os._exit``) gives ``"crash"``; an item
  whose function raises gives ``"error"`` and the worker lives on;
* each worker runs under an address-space limit (RLIMIT_AS), so a runaway
  allocation is a MemoryError in that worker rather than the kernel's OOM
  killer choosing a victim, possibly the training process.

Nothing raises into the caller for a bad item. Workers start with the
``spawn`` (default) or ``forkserver`` method: the parent usually has JAX
loaded and its threads make ``fork`` unsafe. As with any ``spawn`` user, a
script that creates a pool must guard its entry point with
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import multiprocessing.connection
import multiprocessing.reduction
import pickle
import threading
import time
import weakref
from typing import Any, Callable, Sequence

STATUS_OK = "ok"
STATUS_TIMEOUT = "timeout"
STATUS_CRASH = "crash"
STATUS_ERROR = "error"

_READY = "ready"


@dataclasses.dataclass(frozen=True)
class TaskResult:
  """The outcome of one item.

  Attributes:
    status: ``"ok"``, ``"timeout"`` (killed at its deadline), ``"crash"``
      (the worker died) or ``"error"`` (the function raised).
    value: The function's return value when ``status == "ok"``.
    error: A short description otherwise.
    elapsed_s: Seconds from dispatch to outcome.
  """

  status: str
  value: Any = None
  error: str | None = None
  elapsed_s: float = 0.0


def _describe(e: BaseException) -> str:
  try:
    return f"{type(e).__name__}: {str(e)[:300]}"
  except Exception:  # noqa: BLE001 - str() of a SymPy object can fail too.
    return type(e).__name__


def _worker_loop(conn, memory_limit_bytes: int | None, preload: tuple, warmup):
  """Body of a worker: run pickled ``(fn, args)`` calls until told to stop."""
  import importlib
  import signal

  # Ctrl-C belongs to the parent, which shuts the workers down itself.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if memory_limit_bytes:
    try:
      import resource

      resource.setrlimit(
          resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes)
      )
    except (ImportError, ValueError, OSError):
      pass  # Not POSIX, or a lower hard limit is already in force.
  for name in preload:
    importlib.import_module(name)
  if warmup is not None:
    warmup()
  conn.send((_READY, None, None))
  while True:
    try:
      request = conn.recv()
    except (EOFError, OSError):
      return
    if request is None:
      return
    task_id, call = request
    try:
      fn, args = pickle.loads(call)
      reply = (task_id, STATUS_OK, fn(*args))
    except Exception as e:  # noqa: BLE001 - any failure is a graded outcome.
      reply = (task_id, STATUS_ERROR, _describe(e))
    try:
      conn.send(reply)
    except Exception as e:  # noqa: BLE001 - e.g. an unpicklable return value.
      conn.send((task_id, STATUS_ERROR, "cannot send result: " + _describe(e)))


class _Worker:
  """Parent-side handle of one worker process."""

  def __init__(self, ctx, memory_limit_bytes, preload, warmup, startup_s):
    self.conn, child_conn = ctx.Pipe(duplex=True)
    self.process = ctx.Process(
        target=_worker_loop,
        args=(child_conn, memory_limit_bytes, preload, warmup),
        daemon=True,
    )
    self.process.start()
    child_conn.close()
    self.ready = False
    self.task: int | None = None
    self.started = time.monotonic()
    self.startup_deadline = self.started + startup_s
    self.deadline = float("inf")

  def stop(self, graceful: bool) -> None:
    if graceful and self.process.is_alive():
      try:
        self.conn.send(None)
      except (OSError, ValueError):
        pass
      self.process.join(timeout=2.0)
    if self.process.is_alive():
      self.process.kill()
      self.process.join(timeout=5.0)
    self.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
  for worker in workers:
    # A worker still importing, or busy, would not read the stop message.
    worker.stop(graceful=worker.ready and worker.task is None)
  workers.clear()


class WorkerPool:
  """Processes that run ``fn(*args)`` items in parallel, each with a deadline.

  ``fn`` must be a picklable top-level function (importable in a fresh
  interpreter). Use as a context manager or call :meth:`close`; a pool that
  becomes unreachable is shut down by a finalizer. :meth:`map` is
  thread-safe (calls are serialised).

  Attributes:
    stats: Counter of outcomes (``ok``/``timeout``/``crash``/``error``) and
      worker ``restarts`` over the pool's life.
  """

  def __init__(
      self,
      num_workers: int = 2,
      *,
      timeout_s: float = 5.0,
      start_method: str = "spawn",
      preload: Sequence[str] = (),
      warmup: Callable[[], Any] | None = None,
      memory_limit_mb: int | None = 4096,
      startup_timeout_s: float = 120.0,
  ):
    """Starts the workers and waits until every one is ready.

    Args:
      num_workers: Parallel worker processes.
      timeout_s: Default per-item deadline in seconds.
      start_method: ``"spawn"`` or ``"forkserver"`` (never ``"fork"``).
      preload: Modules each worker imports before reporting ready.
      warmup: A picklable top-level function each worker runs before
        reporting ready, to pay first-call costs (parser tables, caches)
        outside any item's deadline.
      memory_limit_mb: Address-space limit per worker; None for none.
      startup_timeout_s: How long a worker may take to become ready.

    Raises:
      ValueError: A bad argument.
      RuntimeError: Workers keep dying before they are ready.
    """
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
    if not timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}.")
    if start_method not in ("spawn", "forkserver"):
      raise ValueError(
          f"start_method must be 'spawn' or 'forkserver', got {start_method!r};"
          " 'fork' is unsafe once JAX has started its threads."
      )
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.stats: collections.Counter = collections.Counter()
    self._ctx = multiprocessing.get_context(start_method)
    self._preload = tuple(preload)
    self._warmup = warmup
    self._memory = memory_limit_mb * 2**20 if memory_limit_mb else None
    self._startup_timeout_s = float(startup_timeout_s)
    self._startup_failures = 0
    self._lock = threading.Lock()
    self._closed = False
    self._workers: list[_Worker] = []
    self._finalizer = weakref.finalize(self, _stop_all, self._workers)
    for _ in range(num_workers):
      self._workers.append(self._new_worker())
    while not all(w.ready for w in self._workers):
      self._poll({}, [])

  def _new_worker(self) -> _Worker:
    return _Worker(
        self._ctx,
        self._memory,
        self._preload,
        self._warmup,
        self._startup_timeout_s,
    )

  def _replace(self, worker: _Worker) -> None:
    worker.stop(graceful=False)
    self._workers[self._workers.index(worker)] = self._new_worker()
    self.stats["restarts"] += 1

  def _startup_failed(self, worker: _Worker) -> None:
    self._startup_failures += 1
    if self._startup_failures > 2 * self.num_workers + 2:
      code = worker.process.exitcode
      self._closed = True
      self._finalizer()
      raise RuntimeError(
          f"WorkerPool: workers keep failing to start (last exit code {code});"
          f" check that the preload modules {self._preload} import in a fresh"
          " Python process."
      )

  def _finish(self, worker, results, started, status, value=None, error=None):
    index = worker.task
    worker.task = None
    worker.deadline = float("inf")
    elapsed = time.monotonic() - started.pop(index)
    results[index] = TaskResult(status, value, error, elapsed)
    self.stats[status] += 1

  def _poll(self, started: dict[int, float], results: list) -> None:
    """Waits for the next event; handles replies, deaths and deadlines."""
    deadlines = [w.deadline for w in self._workers]
    deadlines += [w.startup_deadline for w in self._workers if not w.ready]
    wait_s = max(0.0, min(deadlines) - time.monotonic())
    handles = {}
    for w in self._workers:
      handles[w.conn] = w
      handles[w.process.sentinel] = w
    timeout = None if wait_s == float("inf") else wait_s
    for handle in multiprocessing.connection.wait(list(handles), timeout):
      worker = handles[handle]
      if worker not in self._workers:
        continue  # Replaced already, through its other handle.
      dead = False
      try:
        while worker.conn.poll():
          task_id, status, payload = worker.conn.recv()
          if task_id == _READY:
            worker.ready = True
            self._startup_failures = 0
          elif task_id == worker.task:
            ok = status == STATUS_OK
            self._finish(
                worker,
                results,
                started,
                status,
                value=payload if ok else None,
                error=None if ok else payload,
            )
      except (EOFError, OSError):
        dead = True
      if dead or not worker.process.is_alive():
        worker.process.join(timeout=1.0)
        if worker.task is not None:
          code = worker.process.exitcode
          self._finish(
              worker, results, started, STATUS_CRASH, error=f"exit code {code}"
          )
        if not worker.ready:
          self._startup_failed(worker)
        self._replace(worker)
    now = time.monotonic()
    for worker in list(self._workers):
      if worker.task is not None and now >= worker.deadline:
        limit = worker.deadline - worker.started
        self._finish(
            worker,
            results,
            started,
            STATUS_TIMEOUT,
            error=f"killed after {limit:.3g}s",
        )
        self._replace(worker)
      elif not worker.ready and now >= worker.startup_deadline:
        self._startup_failed(worker)
        self._replace(worker)

  def map(
      self,
      fn: Callable[..., Any],
      args_list: Sequence[tuple],
      timeout_s: float | None = None,
  ) -> list[TaskResult]:
    """Runs ``fn(*args)`` for every args tuple, in parallel.

    Args:
      fn: A picklable top-level function.
      args_list: One tuple of arguments per item.
      timeout_s: Per-item deadline in seconds; default: the pool's.

    Returns:
      One :class:`TaskResult` per item, in input order.

    Raises:
      ValueError: A non-positive ``timeout_s``.
      RuntimeError: The pool is closed, or workers cannot be restarted.
    """
    timeout = self.timeout_s if timeout_s is None else float(timeout_s)
    if not timeout > 0:
      raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}.")
    with self._lock:
      if self._closed:
        raise RuntimeError("WorkerPool is closed; create a new one.")
      results: list[TaskResult | None] = [None] * len(args_list)
      queue = collections.deque(range(len(args_list)))
      started: dict[int, float] = {}
      while queue or started:
        for worker in self._workers:
          while queue and worker.ready and worker.task is None:
            index = queue.popleft()
            try:
              call = multiprocessing.reduction.ForkingPickler.dumps(
                  (fn, tuple(args_list[index]))
              )
            except Exception as e:  # noqa: BLE001 - unpicklable fn or args.
              results[index] = TaskResult(STATUS_ERROR, error=_describe(e))
              self.stats[STATUS_ERROR] += 1
              continue
            try:
              worker.conn.send((index, bytes(call)))
            except (OSError, ValueError):
              queue.appendleft(index)  # Died while idle: use its successor.
              self._replace(worker)
              break
            worker.task = index
            worker.started = started[index] = time.monotonic()
            worker.deadline = worker.started + timeout
        if started or not all(w.ready for w in self._workers):
          self._poll(started, results)
      return results  # type: ignore[return-value]

  def close(self) -> None:
    """Stops all workers (politely, then by force). Idempotent."""
    with self._lock:
      self._closed = True
      self._finalizer()

  def __enter__(self) -> WorkerPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
