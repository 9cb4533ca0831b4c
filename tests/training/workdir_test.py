"""The workdir lock (two real processes) and the config identity check."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from w2s_jax import config_lib
from w2s_jax.training import checkpoint
from w2s_jax.training import workdir as workdir_lib

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)

# The holder handles SIGINT even when the suite was started in the background
# (`make test &`, nohup), whose children inherit an ignored SIGINT.
HOLD = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from w2s_jax.training import workdir
    with workdir.WorkdirLock(sys.argv[1]):
      print("locked", flush=True)
      time.sleep(120)
""")


def _holder(wd):
  """A second real process that takes the lock and keeps it."""
  proc = subprocess.Popen(
      [sys.executable, "-c", HOLD, wd],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT),
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_lock_is_exclusive_across_processes_and_released(tmp_path):
  wd = str(tmp_path)
  proc = _holder(wd)
  try:
    with pytest.raises(workdir_lib.WorkdirError) as e:
      workdir_lib.WorkdirLock(wd).acquire()
    msg = str(e.value)
    assert f"pid {proc.pid} on host {socket.gethostname()}" in msg
    assert "another --workdir" in msg
  finally:
    proc.send_signal(signal.SIGINT)  # the holder exits through its `with`
    proc.wait()
  assert not os.path.exists(os.path.join(wd, workdir_lib.LOCK_NAME))
  with workdir_lib.WorkdirLock(wd) as lock:
    with open(lock.path) as f:
      assert f.read().split() == [socket.gethostname(), str(os.getpid())]
  assert os.listdir(wd) == []


def test_lock_of_a_killed_process_is_stale(tmp_path, caplog):
  wd = str(tmp_path)
  proc = _holder(wd)
  proc.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays
  proc.wait()
  assert os.path.exists(os.path.join(wd, workdir_lib.LOCK_NAME))
  with workdir_lib.WorkdirLock(wd):
    pass
  assert f"stale workdir lock of pid {proc.pid}" in caplog.text


def test_main_on_a_busy_workdir_exits_2_naming_the_holder(tmp_path):
  wd = str(tmp_path / "w")
  os.makedirs(wd)
  holder = _holder(wd)
  try:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2s_jax.main",
            "--config=configs/sft.py:runlocal",
            f"--workdir={wd}",
        ],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
  finally:
    holder.kill()
    holder.wait()
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], lines
  assert sorted(os.listdir(wd)) == [workdir_lib.LOCK_NAME]


def _config(**over):
  c = ml_collections.ConfigDict(
      dict(
          method="sft",
          optim=dict(lr=1e-3, b1=0.9),
          train=dict(steps=4, log_every=1, save_every=2, export=True),
          mesh_shape=(-1, 1, 1),
      )
  )
  config_lib.set_keys(c, over)
  return c


def test_config_diff_allows_only_cadence_and_length():
  stored = workdir_lib.config_dict(_config())
  same = _config(**{"train.steps": 9, "train.log_every": 5})
  assert workdir_lib.config_diff(stored, workdir_lib.config_dict(same)) == []
  other = _config(**{"optim.lr": 3e-4, "train.steps": 9})
  assert workdir_lib.config_diff(stored, workdir_lib.config_dict(other)) == [
      "optim.lr: 0.001 -> 0.0003"
  ]
  # A key the stored run did not have (added to the code since) is no
  # difference; one that disappeared is.
  newer = dict(workdir_lib.config_dict(_config()), extra=1)
  assert workdir_lib.config_diff(stored, newer) == []
  older = dict(stored, gone=1)
  assert workdir_lib.config_diff(older, stored) == ["gone: 1 -> '(absent)'"]


def _checkpoint(wd, step, meta):
  ckpt = checkpoint.Checkpointer(os.path.join(wd, "checkpoints"))
  ckpt.save(step, {"x": np.zeros(2, np.float32)}, meta, force=True)
  ckpt.wait()
  return ckpt


def test_check_resume_reads_the_checkpoints_config(tmp_path):
  wd = str(tmp_path)
  ident = {"config": workdir_lib.config_dict(_config())}
  ckpt = _checkpoint(wd, 2, {"data": 0, **ident})
  r = workdir_lib.check_resume(_config(**{"train.save_every": 1}), wd, ckpt)
  assert r == workdir_lib.Resume(step=2, finished=False)
  with pytest.raises(workdir_lib.WorkdirError) as e:
    workdir_lib.check_resume(_config(**{"optim.b1": 0.5}), wd, ckpt)
  msg = str(e.value)
  assert "optim.b1: 0.9 -> 0.5" in msg and "checkpoint step 2" in msg
  assert "new --workdir" in msg
  # Finished: the last step is saved and the export exists.
  r = workdir_lib.check_resume(_config(**{"train.steps": 2}), wd, ckpt)
  assert not r.finished  # no export yet: the rerun restores and exports
  os.makedirs(os.path.join(wd, "export"))
  r = workdir_lib.check_resume(_config(**{"train.steps": 2}), wd, ckpt)
  assert r.finished
  ckpt.close()


def test_check_resume_of_checkpoints_without_a_stored_config(tmp_path, caplog):
  wd = str(tmp_path)
  ckpt = _checkpoint(wd, 2, {"data": 0})  # written before identities
  # Neither a stored config nor config.json: resume, with a warning.
  r = workdir_lib.check_resume(_config(), wd, ckpt)
  assert r.step == 2 and "resuming without checking" in caplog.text
  # config.json of the old run stands in for the identity.
  config_lib.save_resolved(_config(), wd)
  workdir_lib.check_resume(_config(), wd, ckpt)
  with pytest.raises(workdir_lib.WorkdirError, match="config.json.*optim.lr"):
    workdir_lib.check_resume(_config(**{"optim.lr": 1.0}), wd, ckpt)
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["optim"]["lr"] == 1e-3
  ckpt.close()
