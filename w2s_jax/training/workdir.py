"""What a workdir holds and who may write it: the lock and the config identity.

* ``WorkdirLock``: one job per workdir. ``workdir/.lock`` holds the holder's
  host and pid under an exclusive ``fcntl.flock``; the kernel drops the lock
  when that process dies (even on SIGKILL), so a lock file left behind is
  detected as stale and taken over. A second job fails at once (exit 2)
  naming the holder. Multi-process runs: process 0 alone takes it.
* ``check_resume``: the resolved config is part of the checkpoint's identity.
  Each checkpoint's metadata stores the config it was trained with; resuming
  with a config that differs outside ``RESUMABLE`` fails naming the keys.
  Checkpoints from before the identity was stored fall back to
  ``config.json``, or resume with a warning when neither exists.
  ``config.json`` (``config_lib.save_resolved``: temp + rename) is written
  only once the config is known to describe the workdir's checkpoints.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# Keys that may change between a run and its resume: length, cadence, output
# and placement. Everything else changes what the checkpoint would mean.
RESUMABLE = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.save_every",
    "train.keep",
    "train.tensorboard",
    "train.export",
    "train.debug_kill_at",
    "train.debug_kill_signal",
    "rl.reward_workers",
    "mesh_shape",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "initialization_timeout",
)


class WorkdirError(ValueError):
  """A user error about the workdir (exit 2 through ``main``)."""


class WorkdirLock:
  """An exclusive, process-lifetime lock on ``workdir`` (a context manager)."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> WorkdirLock:
    """Takes the lock or raises ``WorkdirError`` naming the holder."""
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = _read_holder(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        raise WorkdirError(
            f"workdir {self.workdir} is in use by {holder} (lock"
            f" {self.path}); wait for that job to finish or stop it, or pass"
            " another --workdir."
        ) from None
      # The holder may have unlinked the file between our open and flock:
      # then we hold a lock on a dead inode; start over on the new file.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    stale = _read_holder(fd)
    if stale != "an unknown process":
      log.warning("taking over a stale workdir lock of %s", stale)
    os.ftruncate(fd, 0)
    os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:  # unlink while locked: a waiting opener sees the inode change
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> str:
  try:
    text = os.pread(fd, 256, 0).decode(errors="replace").split()
  except OSError:
    text = []
  if len(text) >= 2:
    return f"pid {text[1]} on host {text[0]}"
  return "an unknown process"


def config_dict(config: Any) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix[:-1]: d}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}."))
  return out


def config_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """``key: old -> new`` for every key that may not change on resume.

  Keys absent from ``stored`` (added to the code since that run) are not
  differences; keys that were dropped are.
  """
  a, b = _flat(stored), _flat(current)
  out = []
  for key in sorted(a):
    if key in RESUMABLE or key.startswith("eval."):
      continue
    new = b.get(key, "(absent)")
    if a[key] != new:
      out.append(f"{key}: {a[key]!r} -> {new!r}")
  return out


@dataclasses.dataclass(frozen=True)
class Resume:
  """Where a run starts: ``step`` None = fresh; ``finished`` = nothing to do."""

  step: int | None
  finished: bool


def check_resume(config: Any, workdir: str, ckpt: Any) -> Resume:
  """Checks that ``config`` may resume ``ckpt`` (a ``Checkpointer``).

  Raises:
    WorkdirError: the checkpoint was trained with another config (outside
      ``RESUMABLE``); the message names the keys and how to start fresh.
  """
  step = ckpt.latest_step()
  if step is None:
    return Resume(None, False)
  stored = ckpt.read_meta(step).get("config")
  source = f"checkpoint step {step}"
  if stored is None:
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        stored = json.load(f)
      source = f"{path} (checkpoint step {step} predates stored configs)"
    else:
      log.warning(
          "checkpoint step %d in %s stores no config and the workdir has no"
          " config.json: resuming without checking the config.",
          step,
          ckpt.directory,
      )
      return Resume(step, _finished(config, workdir, step))
  diff = config_diff(stored, config_dict(config))
  if diff:
    shown = "; ".join(diff[:8]) + (
        f"; and {len(diff) - 8} more" if len(diff) > 8 else ""
    )
    raise WorkdirError(
        f"workdir {workdir} holds a run with another config ({source}):"
        f" {shown}. Rerun with the original values to resume, or start fresh"
        " with a new --workdir (or delete"
        f" {os.path.join(workdir, 'checkpoints')})."
    )
  return Resume(step, _finished(config, workdir, step))


def _finished(config: Any, workdir: str, step: int) -> bool:
  """The last step is saved and, if exported, the export is complete (it is
  renamed into place, so its presence means it was fully written)."""
  if step < int(config.train.steps):
    return False
  return not config.train.get("export", True) or os.path.isdir(
      os.path.join(workdir, "export")
  )


def finished_message(workdir: str, step: int) -> str:
  return (
      f"workdir {workdir} is finished (checkpoint step {step} >="
      " train.steps); nothing to do. Pass a new --workdir to train again."
  )
