"""Multi-process start-up: ``jax.distributed.initialize`` with clear failures.

One process per host (TPU VM worker, SLURM task, or a local CPU process)
joins one JAX runtime; GSPMD then runs the same jitted step over the global
mesh. Nothing here communicates itself: it only decides whether and how to
call ``jax.distributed.initialize``.

Mode: ``config.distributed`` (or the ``W2S_DISTRIBUTED`` environment variable,
which wins, so launchers can force it without a config key):

* ``'auto'`` initialises inside a detected cluster: an ``srun`` step of a
  SLURM job, a TPU VM pod slice that exports ``TPU_WORKER_HOSTNAMES`` /
  ``TPU_PROCESS_ADDRESSES``, or an explicit coordinator address;
* ``'on'`` always initialises (jax auto-detects SLURM and GCE TPU metadata);
* ``'off'`` never does.

Explicit coordinates (first source wins), for clusters jax cannot detect:

=======================  ===========================  =======================
config key               environment variable         meaning
=======================  ===========================  =======================
coordinator_address      JAX_COORDINATOR_ADDRESS      ``host:port`` of proc 0
num_processes            JAX_NUM_PROCESSES            processes in the job
process_id               JAX_PROCESS_ID               this process, 0-based
initialization_timeout   JAX_INITIALIZATION_TIMEOUT   seconds to wait (300)
=======================  ===========================  =======================

jax's own initialisation aborts the whole interpreter (a C++ fatal error)
when it cannot reach the coordinator, after the timeout. So a non-zero
process first probes the coordinator's TCP port for the same timeout and
raises ``TimeoutError`` naming the address and the fix instead.

On CPU, cross-process collectives use gloo (set explicitly; it is what the
multi-process CPU tests and ``launch/local_multiprocess.sh`` rely on).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
DEFAULT_TIMEOUT_S = 300

# Variables whose presence means jax can find the other processes itself.
SLURM_STEP_ENV = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES")


@dataclasses.dataclass(frozen=True)
class Coordinates:
  """Where this process sits in the job (None: left to jax's detection).

  Attributes:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: total processes.
    process_id: this process's index.
    initialization_timeout: seconds to wait for every process to join.
  """

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  initialization_timeout: int = DEFAULT_TIMEOUT_S


def _config_get(config: Any, key: str) -> Any:
  value = config.get(key, None) if config is not None else None
  # 0 / '' / -1 are the CLI's "unset" for ints and strings in a ConfigDict.
  if value in (None, "") or (key == "process_id" and value == -1):
    return None
  if key in ("num_processes", "initialization_timeout") and value == 0:
    return None
  return value


def _int(name: str, value: Any) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r} must be an integer.") from None


def split_address(address: str) -> tuple[str, int]:
  """``'host:port'`` (or ``'[v6]:port'``) -> (host, port), validated."""
  host, sep, port = str(address).rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(
        f"coordinator address {address!r} must be host:port (e.g."
        " 10.0.0.2:8476); set JAX_COORDINATOR_ADDRESS or"
        " config.coordinator_address."
    )
  return host, int(port)


def resolve(
    config: Any = None, environ: Mapping[str, str] | None = None
) -> Coordinates:
  """The explicit coordinates from ``config`` keys, then ``JAX_*`` variables.

  Raises:
    ValueError: a malformed address, a non-integer or out-of-range count or
      id, or an address without the process count/id outside SLURM/TPU.
  """
  env = os.environ if environ is None else environ
  sources = (
      ("coordinator_address", "JAX_COORDINATOR_ADDRESS"),
      ("num_processes", "JAX_NUM_PROCESSES"),
      ("process_id", "JAX_PROCESS_ID"),
      ("initialization_timeout", "JAX_INITIALIZATION_TIMEOUT"),
  )
  raw = {}
  for key, var in sources:
    value = _config_get(config, key)
    raw[key] = value if value is not None else (env.get(var) or None)
  address = raw["coordinator_address"]
  if address is not None:
    split_address(address)
  num = raw["num_processes"]
  num = None if num is None else _int("num_processes", num)
  pid = raw["process_id"]
  pid = None if pid is None else _int("process_id", pid)
  timeout = raw["initialization_timeout"]
  timeout = DEFAULT_TIMEOUT_S if timeout is None else _int("timeout", timeout)
  if num is not None and num < 1:
    raise ValueError(f"num_processes={num} must be >= 1.")
  if pid is not None and num is not None and not 0 <= pid < num:
    raise ValueError(
        f"process_id={pid} must be in [0, {num}) for num_processes={num}."
    )
  if timeout <= 0:
    raise ValueError(
        f"initialization_timeout={timeout} must be a positive number of"
        " seconds."
    )
  detected = any(v in env for v in TPU_ENV) or all(
      v in env for v in SLURM_STEP_ENV
  )
  if address is not None and (num is None or pid is None) and not detected:
    raise ValueError(
        f"coordinator address {address} is set but the number of processes"
        f" ({num}) or this process's id ({pid}) is not; set"
        " JAX_NUM_PROCESSES and JAX_PROCESS_ID (or config.num_processes /"
        " config.process_id), or launch under srun / on a TPU VM."
    )
  return Coordinates(address, num, pid, timeout)


def wait_for_coordinator(
    address: str, timeout_s: float, poll_s: float = 0.25
) -> None:
  """Blocks until ``address`` accepts TCP connections, or raises.

  Raises:
    TimeoutError: nothing listens there within ``timeout_s`` seconds.
  """
  host, port = split_address(address)
  deadline = time.monotonic() + float(timeout_s)
  while True:
    remaining = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), max(min(remaining, 2), 0.1)):
        return
    except OSError as e:
      if time.monotonic() + poll_s >= deadline:
        raise TimeoutError(
            f"cannot reach the JAX coordinator at {address} within"
            f" {timeout_s:g} s ({e.__class__.__name__}: {e}). Start process"
            " 0 (it hosts the coordinator) with the same address, check the"
            " host/port and firewall (JAX_COORDINATOR_ADDRESS or"
            " config.coordinator_address), or raise"
            " JAX_INITIALIZATION_TIMEOUT if process 0 starts late."
        ) from None
    time.sleep(poll_s)


def mode(config: Any = None, environ: Mapping[str, str] | None = None) -> str:
  """'auto' | 'on' | 'off' from ``W2S_DISTRIBUTED`` or ``config``."""
  env = os.environ if environ is None else environ
  value = env.get("W2S_DISTRIBUTED") or (
      config.get("distributed", "auto") if config is not None else "auto"
  )
  value = str(value).lower()
  if value not in MODES:
    raise ValueError(
        f"distributed mode {value!r} (config.distributed or W2S_DISTRIBUTED)"
        f" must be one of {MODES}."
    )
  return value


def in_cluster(environ: Mapping[str, str] | None = None) -> bool:
  """True inside an srun step, a TPU pod slice, or with a coordinator set."""
  env = os.environ if environ is None else environ
  return (
      all(v in env for v in SLURM_STEP_ENV)
      or any(v in env for v in TPU_ENV)
      or bool(env.get("JAX_COORDINATOR_ADDRESS"))
  )


def _platform_may_be_cpu() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
  return not platforms or "cpu" in str(platforms).split(",")


def maybe_initialize(config: Any = None) -> bool:
  """Initialises ``jax.distributed`` if the mode asks; returns whether it did.

  Must run before anything touches a jax backend (``jax.devices()``).

  Raises:
    ValueError: bad mode or coordinates (see ``resolve``).
    TimeoutError: a non-zero process cannot reach the coordinator in time.
  """
  m = mode(config)
  if m == "off":
    return False
  coords = resolve(config)
  if m == "auto" and not (in_cluster() or coords.coordinator_address):
    return False
  if jax.distributed.is_initialized():
    return True
  if _platform_may_be_cpu():
    # Collectives between CPU processes; without it a multi-process CPU
    # computation has no transport.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coords.coordinator_address and coords.process_id not in (None, 0):
    wait_for_coordinator(
        coords.coordinator_address, coords.initialization_timeout
    )
  log.info(
      "jax.distributed.initialize(coordinator=%s, num_processes=%s,"
      " process_id=%s, timeout=%ss)",
      coords.coordinator_address,
      coords.num_processes,
      coords.process_id,
      coords.initialization_timeout,
  )
  jax.distributed.initialize(
      coordinator_address=coords.coordinator_address,
      num_processes=coords.num_processes,
      process_id=coords.process_id,
      initialization_timeout=coords.initialization_timeout,
  )
  return True


def is_primary() -> bool:
  """True on process 0: the one process that writes files and logs."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (no-op in a single process).

  Use after process 0 writes a file the others will read.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def process_info() -> dict[str, Any]:
  """Process index/count and device counts, for the first log line."""
  return {
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "local_devices": jax.local_device_count(),
      "global_devices": jax.device_count(),
      "platform": jax.default_backend(),
  }
