"""How a training run stops, shared by the offline and the RL host loops.

The exit-code contract of ``python -m w2s_jax.main`` (README, "Exit codes"):

* 0: finished (or the workdir was already finished);
* 2: user error, one line (``main.USER_ERRORS``, ``workdir.WorkdirError``);
* 3: a non-finite loss or parameter norm (``NonFinite``); the last good
  checkpoint is kept, the bad state is never saved;
* 130 / 143: SIGINT / SIGTERM (``Stopped``), raised after a checkpoint of
  the last finished step is written; rerunning the command resumes. A second
  SIGINT aborts at once without saving.

``run`` is the one host loop the offline trainer (``trainer``) and the RL
trainer (``rl_trainer``) both drive through a step callback: resume
(``restore``), the NaN stop, the SIGTERM / SIGINT save, the save cadence,
metric writing (one row per logged step across resumes), the eval cadence,
the progress bar, fault injection (``debug_kill``) and the export of the
final model. ``main`` maps the exceptions to exit codes.

This module imports no jax at module level (``main`` imports it first).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
from collections.abc import Callable
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


# -- the host loop ------------------------------------------------------------


@dataclasses.dataclass
class Saved:
  """What a checkpoint holds besides the train state.

  Attributes:
    source: the input iterator (``get_state`` / ``set_state``), stored in the
      checkpoint's metadata under ``source_key`` ('data' offline, 'prompts'
      for RL); resume continues it exactly.
    source_key: its metadata key.
    arrays: host arrays saved in the state tree beside the train state
      (RL: the base PRNG key 'rng'); ``restore`` replaces them.
  """

  source: Any
  source_key: str
  arrays: dict[str, Any] = dataclasses.field(default_factory=dict)


def encode_state(state: Any) -> Any:
  """An iterator state, JSON-safe (bytes are stored as latin-1 text)."""
  if isinstance(state, bytes):
    return {"__bytes__": state.decode("latin-1")}
  return json.loads(json.dumps(state, default=str))


def decode_state(state: Any) -> Any:
  """The inverse of ``encode_state``."""
  if isinstance(state, dict) and "__bytes__" in state:
    return state["__bytes__"].encode("latin-1")
  return state


def restore(ckpt: Any, train_state: Any, saved: Saved) -> tuple[Any, int]:
  """``(train_state, start)`` from the latest checkpoint, if there is one.

  The input iterator and ``saved.arrays`` are restored in place; without a
  checkpoint everything stays as given and ``start`` is 0.
  """
  if ckpt.latest_step() is None:
    return train_state, 0
  import numpy as np  # noqa: PLC0415

  state, meta, start = ckpt.restore({**train_state, **saved.arrays})
  for k in saved.arrays:
    saved.arrays[k] = np.asarray(state.pop(k))
  saved.source.set_state(decode_state(meta[saved.source_key]))
  log.info("resumed from step %d", start)
  return state, start


@dataclasses.dataclass
class Run:
  """One job's host loop: what ``run`` needs besides the step callback.

  Attributes:
    config: the job's config (``train.*`` cadences; its identity is stored
      with every checkpoint, ``workdir.check_resume``).
    workdir: metrics.jsonl, tb/ and export/ go here.
    ckpt: the run's ``checkpoint.Checkpointer`` (the caller closes it).
    saved: what a checkpoint holds besides the train state.
    hint: what to change when the loss is not finite.
    model_fn: ``train_state -> model`` for eval and export (None: neither).
    eval_fn: ``(model, step) -> dict`` every ``train.eval_every`` steps and
      at the end.
    postfix: progress-bar label -> metric key.
  """

  config: Any
  workdir: str
  ckpt: Any
  saved: Saved
  hint: str = "lower optim.lr"
  model_fn: Callable[[Any], Any] | None = None
  eval_fn: Callable[[Any, int], dict[str, float]] | None = None
  postfix: tuple[tuple[str, str], ...] = (("loss", "train/loss"),)


def run(
    r: Run, step_fn: Callable, train_state: Any, start: int
) -> tuple[Any, dict[str, float], int]:
  """Steps ``start..train.steps``; returns (state, last metrics, last step).

  ``step_fn(train_state, step) -> (train_state, metrics)`` runs step
  ``step`` (0-based) and may return device scalars: step n + 1 is
  dispatched before step n's metrics are read, except on steps that save,
  which read them first (the state is donated, and a non-finite state is
  never saved). Metrics are written every ``train.log_every`` steps and at
  every save; a save happens every ``train.save_every`` steps, at the end
  and on SIGTERM / SIGINT (then ``Stopped`` is raised). At the end the
  model is evaluated and exported to ``workdir/export``.
  """
  from w2s_jax.training import metrics  # noqa: PLC0415  (imports jax)
  from w2s_jax.training import workdir as workdir_lib  # noqa: PLC0415

  tcfg, ckpt = r.config.train, r.ckpt
  total = int(tcfg.steps)
  log_every = int(tcfg.get("log_every", 10))
  eval_every = int(tcfg.get("eval_every", 0))
  ident = {"config": workdir_lib.config_dict(r.config)}
  writer = metrics.MetricWriter(
      r.workdir,
      tensorboard=bool(tcfg.get("tensorboard", True)),
      start_step=start,
  )
  last: dict[str, float] = {}
  pending, done = None, start

  def read(step_metrics, step):
    host = metrics.to_host(step_metrics)
    check_finite(host, step, ckpt, r.hint)
    return host

  try:
    with StopSignals() as signals:
      bar = progress(start, total, str(r.config.method))
      for step in bar:
        train_state, step_metrics = step_fn(train_state, step)
        if pending is not None:
          last = read(*pending)
          if pending[1] % log_every == 0:
            writer.write(pending[1], last)
        done = step + 1
        pending = (step_metrics, done)
        stopping = signals.received is not None
        if done % ckpt.save_every == 0 or done == total or stopping:
          last, pending = read(*pending), None
          writer.write(done, last)
          ckpt.save(
              done,
              {**train_state, **r.saved.arrays},
              {
                  r.saved.source_key: encode_state(r.saved.source.get_state()),
                  **ident,
              },
              force=True,
          )
        if last:
          bar.set_postfix(
              {name: f"{last.get(k, 0.0):.4f}" for name, k in r.postfix}
          )
        if r.eval_fn is not None and eval_every and done % eval_every == 0:
          writer.write(done, r.eval_fn(r.model_fn(train_state), done))
        stop_if_signalled(signals, done, ckpt)
        debug_kill(tcfg, done, ckpt)
      if pending is not None:
        last = read(*pending)
        writer.write(pending[1], last)
    ckpt.wait()
    model = None
    if r.model_fn is not None and done == total:
      model = r.model_fn(train_state)
      if r.eval_fn is not None:
        result = r.eval_fn(model, done)
        writer.write(done, result)
        last.update(result)
  finally:
    writer.close()
  if model is not None and tcfg.get("export", True):
    export_model(model, os.path.join(r.workdir, "export"))
  return train_state, last, done


def export_model(model: Any, path: str) -> None:
  """Writes ``model`` as an HF checkpoint; every process must call it.

  With several processes the parameters are sharded across hosts, so they
  are first gathered (a collective) and process 0 alone writes.
  """
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from w2s_jax.models import hf_io  # noqa: PLC0415

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    graphdef, state = nnx.split(model)
    model = nnx.merge(
        graphdef, multihost_utils.process_allgather(state, tiled=True)
    )
  if jax.process_index() == 0:
    hf_io.save_pretrained(model, path)
