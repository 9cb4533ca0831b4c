"""Multi-process start-up: ``jax.distributed.initialize`` when configured.

``config.distributed``: 'auto' initialises inside a detected cluster (SLURM,
TPU VM pod slice, an explicit ``JAX_COORDINATOR_ADDRESS``), 'on' always,
'off' never.
"""

from __future__ import annotations

import os
from typing import Any

CLUSTER_ENV = (
    "SLURM_JOB_ID",
    "TPU_WORKER_HOSTNAMES",
    "JAX_COORDINATOR_ADDRESS",
)


def maybe_initialize(config: Any) -> bool:
  """Initialises jax.distributed if ``config.distributed`` asks; returns
  whether it did."""
  mode = str(config.get("distributed", "auto"))
  if mode == "off":
    return False
  in_cluster = any(v in os.environ for v in CLUSTER_ENV)
  if mode == "on" or (mode == "auto" and in_cluster):
    import jax  # noqa: PLC0415

    jax.distributed.initialize()
    return True
  return False
