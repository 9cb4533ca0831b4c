"""The shared stop logic: signals, the NaN stop, exit codes."""

import signal
import threading

import pytest

from w2s_jax.training import loop


class _Ckpt:
  directory = "/wd/checkpoints"

  def __init__(self, latest):
    self.latest, self.waited = latest, 0

  def latest_step(self):
    return self.latest

  def wait(self):
    self.waited += 1


@pytest.fixture(autouse=True)
def _sigint_delivered():
  """A suite started in the background (`make test &`, nohup) inherits an
  ignored SIGINT, which StopSignals leaves alone by design; these tests send
  SIGINT, so they install Python's default handler for their duration."""
  old = signal.getsignal(signal.SIGINT)
  if old is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, old)


def _signal_self(sig):
  """Sends ``sig`` to this thread (the main one), so Python's handler runs
  before the call returns. ``os.kill`` may hand it to another thread of the
  process (JAX's, an executor's), and the handler then runs later."""
  signal.pthread_kill(threading.get_ident(), sig)


@pytest.mark.parametrize(
    "sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_first_signal_is_recorded_and_becomes_stopped(sig, code):
  old = signal.getsignal(sig)
  with loop.StopSignals() as signals:
    loop.stop_if_signalled(signals, 1, _Ckpt(1))  # nothing received: no-op
    _signal_self(sig)  # a real signal to this process
    assert signals.received == sig
    ckpt = _Ckpt(7)
    with pytest.raises(loop.Stopped) as e:
      loop.stop_if_signalled(signals, 7, ckpt)
  assert ckpt.waited == 1  # the save is finished before the stop
  assert e.value.exit_code == code
  assert str(e.value) == (
      f"{signal.Signals(sig).name}: saved step 7 in /wd/checkpoints; rerun"
      " the same command to resume."
  )
  assert signal.getsignal(sig) is old  # handlers restored


def test_second_ctrl_c_aborts_at_once():
  with loop.StopSignals() as signals:
    _signal_self(signal.SIGINT)
    _signal_self(signal.SIGTERM)  # a repeated SIGTERM: one stop
    assert signals.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
      _signal_self(signal.SIGINT)
      for _ in range(1000):  # the handler runs between bytecodes
        pass


def test_check_finite_names_the_metric_and_the_last_good_step():
  loop.check_finite({"train/loss": 1.0, "train/param_norm": 2.0}, 3, None, "")
  ckpt = _Ckpt(4)
  with pytest.raises(loop.NonFinite) as e:
    loop.check_finite(
        {"train/loss": 1.0, "train/param_norm": float("inf")},
        5,
        ckpt,
        "lower optim.lr",
    )
  assert str(e.value) == (
      "train/param_norm is inf at step 5; stopping. The last good checkpoint"
      " is step 4 in /wd/checkpoints; lower optim.lr, then rerun to resume."
  )
  assert isinstance(e.value, FloatingPointError) and ckpt.waited == 1


def test_an_ignored_signal_stays_ignored():
  old = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with loop.StopSignals() as signals:
      _signal_self(signal.SIGINT)
      assert signals.received is None
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, old)
