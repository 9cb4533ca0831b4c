"""Distributed start-up: coordinates, modes, and a clear unreachable error."""

import os
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from w2s_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def test_resolve_reads_jax_env_and_config_wins():
  env = {
      "JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476",
      "JAX_NUM_PROCESSES": "4",
      "JAX_PROCESS_ID": "3",
      "JAX_INITIALIZATION_TIMEOUT": "17",
  }
  c = distributed.resolve(None, env)
  assert c == distributed.Coordinates("10.0.0.2:8476", 4, 3, 17)
  c = distributed.resolve(_cfg(process_id=1, num_processes=2), env)
  assert (c.num_processes, c.process_id) == (2, 1)
  # The CLI's "unset" values (0 / -1 / '') fall through to the environment.
  c = distributed.resolve(_cfg(process_id=-1, coordinator_address=""), env)
  assert (c.coordinator_address, c.process_id) == ("10.0.0.2:8476", 3)
  assert distributed.resolve(None, {}) == distributed.Coordinates()


@pytest.mark.parametrize(
    "env, match",
    [
        (
            {"JAX_COORDINATOR_ADDRESS": "10.0.0.2"},
            r"'10.0.0.2' must be host:port",
        ),
        ({"JAX_COORDINATOR_ADDRESS": "h:99999"}, r"must be host:port"),
        (
            {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            r"process_id=2 must be in \[0, 2\)",
        ),
        ({"JAX_NUM_PROCESSES": "two"}, r"num_processes='two' must be an int"),
        ({"JAX_NUM_PROCESSES": "-1"}, r"num_processes=-1 must be >= 1"),
        ({"JAX_INITIALIZATION_TIMEOUT": "0"}, r"must be a positive number"),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_PROCESS_ID": "0"},
            r"h:1234 is set but the number of processes \(None\).*"
            r"JAX_NUM_PROCESSES",
        ),
    ],
)
def test_resolve_rejects_bad_coordinates(env, match):
  with pytest.raises(ValueError, match=match):
    distributed.resolve(None, env)


def test_address_without_ids_is_fine_where_jax_detects_them():
  env = {"JAX_COORDINATOR_ADDRESS": "h:1234", **SLURM}
  assert distributed.resolve(None, env).process_id is None


def test_mode_and_cluster_detection():
  assert distributed.mode(_cfg(distributed="off"), {}) == "off"
  assert distributed.mode(_cfg(distributed="off"), {"W2S_DISTRIBUTED": "on"})
  assert distributed.mode(None, {}) == "auto"
  with pytest.raises(ValueError, match=r"'sometimes'.*must be one of"):
    distributed.mode(_cfg(distributed="sometimes"), {})
  assert distributed.in_cluster(SLURM)
  # salloc without srun: one batch shell, not a multi-process step.
  assert not distributed.in_cluster({"SLURM_JOB_ID": "7"})
  assert distributed.in_cluster({"TPU_WORKER_HOSTNAMES": "a,b"})
  assert distributed.in_cluster({"JAX_COORDINATOR_ADDRESS": "h:1"})
  assert not distributed.in_cluster({})


def test_single_process_does_not_initialize(monkeypatch):
  for v in ("JAX_COORDINATOR_ADDRESS", "W2S_DISTRIBUTED", *SLURM):
    monkeypatch.delenv(v, raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  monkeypatch.delenv("TPU_PROCESS_ADDRESSES", raising=False)
  assert not distributed.maybe_initialize(_cfg(distributed="auto"))
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")  # 'off' wins
  assert not distributed.maybe_initialize(_cfg(distributed="off"))
  assert distributed.is_primary()
  info = distributed.process_info()
  assert info["process_count"] == 1 and info["global_devices"] == 8
  distributed.sync("noop")  # single process: returns at once


def test_wait_for_coordinator_returns_when_listening_and_times_out():
  with socket.socket() as srv:
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    distributed.wait_for_coordinator(f"127.0.0.1:{srv.getsockname()[1]}", 2)
  port = _free_port()
  t0 = time.monotonic()
  with pytest.raises(
      TimeoutError,
      match=rf"cannot reach the JAX coordinator at 127.0.0.1:{port} within"
      r" 0.5 s.*Start process 0",
  ):
    distributed.wait_for_coordinator(f"127.0.0.1:{port}", 0.5, poll_s=0.1)
  assert time.monotonic() - t0 < 3


def _run_main(env_extra, tmp_path, *flags, timeout=60):
  env = dict(os.environ)
  for v in SLURM:
    env.pop(v, None)
  env.update(env_extra)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  cmd = [
      sys.executable,
      "-m",
      "w2s_jax.main",
      "--config=configs/sft.py:runlocal",
      f"--workdir={tmp_path}",
      "--config.train.steps=1",
      "--config.train.batch_size=4",
      "--config.data.num_examples=8",
      "--config.train.export=False",
      "--config.train.tensorboard=False",
      *flags,
  ]
  t0 = time.monotonic()
  p = subprocess.run(
      cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )
  return p, time.monotonic() - t0


def test_unreachable_coordinator_fails_fast_with_the_address(tmp_path):
  port = _free_port()
  p, elapsed = _run_main(
      {
          "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
          "JAX_NUM_PROCESSES": "2",
          "JAX_PROCESS_ID": "1",
          "JAX_INITIALIZATION_TIMEOUT": "2",
      },
      tmp_path,
  )
  assert p.returncode != 0
  assert f"cannot reach the JAX coordinator at 127.0.0.1:{port}" in p.stderr
  assert "Start process 0" in p.stderr
  assert elapsed < 40, elapsed  # seconds, not jax's 300 s default


@pytest.mark.slow  # ~20 s: a full (1-step) training run in a subprocess
def test_one_process_job_initializes_and_trains(tmp_path):
  """The whole path: coordinator env -> initialize -> a 1-step run."""
  addr = f"127.0.0.1:{_free_port()}"
  p, _ = _run_main(
      {
          "JAX_COORDINATOR_ADDRESS": addr,
          "JAX_NUM_PROCESSES": "1",
          "JAX_PROCESS_ID": "0",
      },
      tmp_path,
      "--verbosity=0",
  )
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"jax.distributed.initialize(coordinator={addr}" in p.stderr
  assert '"final"' in p.stdout
