"""How a training run stops, shared by the offline and the RL host loops.

The exit-code contract of ``python -m w2s_jax.main`` (README, "Exit codes"):

* 0: finished (or the workdir was already finished);
* 2: user error, one line (``main.USER_ERRORS``, ``workdir.WorkdirError``);
* 3: a non-finite loss or parameter norm (``NonFinite``); the last good
  checkpoint is kept, the bad state is never saved;
* 130 / 143: SIGINT / SIGTERM (``Stopped``), raised after a checkpoint of
  the last finished step is written; rerunning the command resumes. A second
  SIGINT aborts at once without saving.

Both loops call ``StopSignals`` (polled once per step), ``check_finite`` and
``stop_if_signalled``; ``main`` maps the exceptions to exit codes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from typing import Any

log = logging.getLogger(__name__)

EXIT_NON_FINITE = 3


class NonFinite(FloatingPointError):
  """A non-finite training metric; the last good checkpoint is intact."""


class Stopped(Exception):  # noqa: N818  (a stop, not an error)
  """The run stopped on a signal after saving ``step``."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step, self.directory = signum, step, directory
    name = signal.Signals(signum).name
    super().__init__(
        f"{name}: saved step {step} in {directory}; rerun the same command"
        " to resume."
    )

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


class StopSignals:
  """SIGTERM and SIGINT set ``received`` (polled by the loop, which saves and
  raises ``Stopped``); a second SIGINT raises KeyboardInterrupt at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._old: dict[int, Any] = {}

  def __enter__(self) -> StopSignals:
    for sig in self.SIGNALS:
      if signal.getsignal(sig) is signal.SIG_IGN:
        continue  # e.g. SIGINT of a background job (`cmd &`, nohup)
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: signals stay as they are
        pass
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: abort, do not save
    if self.received is None:
      self.received = signum
      log.warning(
          "%s: saving a checkpoint at the end of this step (Ctrl-C again"
          " aborts without saving).",
          signal.Signals(signum).name,
      )

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}


def check_finite(
    host: dict[str, float], step: int, ckpt: Any, hint: str
) -> None:
  """Raises ``NonFinite`` if the loss or the parameter norm is not finite.

  Args:
    host: the step's host metrics.
    step: the step they belong to.
    ckpt: the run's ``Checkpointer`` (names the last good step).
    hint: what to change, e.g. "lower optim.lr".
  """
  for k in ("train/loss", "train/param_norm"):
    if not math.isfinite(host.get(k, 0.0)):
      ckpt.wait()
      raise NonFinite(
          f"{k} is {host[k]} at step {step}; stopping. The last good"
          f" checkpoint is step {ckpt.latest_step()} in {ckpt.directory};"
          f" {hint}, then rerun to resume."
      )


def stop_if_signalled(signals: StopSignals, step: int, ckpt: Any) -> None:
  """Raises ``Stopped`` once a signalled run has saved ``step``."""
  if signals.received is None:
    return
  ckpt.wait()
  raise Stopped(signals.received, step, ckpt.directory)


def progress(start: int, total: int, desc: str) -> Any:
  """The steps ``start..total-1`` under a tqdm bar (process 0 draws it)."""
  import jax  # noqa: PLC0415  (this module is imported by main before jax)
  import tqdm  # noqa: PLC0415

  return tqdm.tqdm(
      range(start, total),
      initial=start,
      total=total,
      desc=desc,
      disable=jax.process_index() != 0,
  )


def debug_kill(tcfg: Any, step: int, ckpt: Any) -> None:
  """Fault injection for the tests: ``train.debug_kill_signal`` to this
  process after ``train.debug_kill_at`` steps (a real signal)."""
  if step == int(tcfg.get("debug_kill_at", 0)):
    ckpt.wait()
    os.kill(os.getpid(), getattr(signal, str(tcfg.debug_kill_signal)))
