"""Two CPU processes x 2 devices train exactly like one process x 4 devices.

``launch/local_multiprocess.sh 2 2`` starts a real ``jax.distributed`` job
(coordinator on 127.0.0.1, gloo collectives) running a tiny distillation
through ``python -m w2s_jax.main``; the reference is the same config in one
process with 4 devices. The mesh (data=2, fsdp=2) puts one FSDP shard of
every weight on each process, so parameters, gradients and the batch all
cross the process boundary. Per-step and final metrics must agree to 1e-5,
and only process 0 may write metrics.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from w2s_jax import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
ARGS = [
    "--config=configs/distill.py:runlocal",
    f"--config.train.steps={STEPS}",
    "--config.train.batch_size=8",
    "--config.train.micro_batches=2",
    "--config.train.save_every=2",
    "--config.train.log_every=1",
    "--config.train.tensorboard=False",
    "--config.data.num_examples=64",
    "--config.mesh_shape=(2,2,1)",
]


def _env(**extra):
  env = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_PROCESS"))
  }
  env.update(PYTHON=sys.executable, JAX_PLATFORMS="cpu", **extra)
  return env


def _final(stdout: str) -> dict:
  lines = [ln for ln in stdout.splitlines() if ln.startswith('{"final"')]
  assert len(lines) == 1, stdout[-3000:]
  return json.loads(lines[0])["final"]


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(ln) for ln in f if ln.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mp")
  multi, single, logs = tmp / "multi", tmp / "single", tmp / "logs"
  logs.mkdir()
  # Start both at once: the 2-process job mostly waits on its peer.
  p_multi = subprocess.Popen(
      [
          "bash",
          "launch/local_multiprocess.sh",
          "2",
          "2",
          "--",
          *ARGS,
          f"--workdir={multi}",
      ],
      cwd=ROOT,
      env=_env(LOG_DIR=str(logs)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  p_single = subprocess.Popen(
      [sys.executable, "-m", "w2s_jax.main", *ARGS, f"--workdir={single}"],
      cwd=ROOT,
      env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  out_m, err_m = p_multi.communicate(timeout=400)
  out_s, err_s = p_single.communicate(timeout=400)
  proc1 = (
      (logs / "proc1.log").read_text() if (logs / "proc1.log").exists() else ""
  )
  assert p_single.returncode == 0, err_s[-3000:]
  assert p_multi.returncode == 0, err_m[-3000:] + "\nproc1:\n" + proc1[-3000:]
  return {
      "multi": (out_m, multi, proc1),
      "single": (out_s, single),
  }


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
  out_m, multi, proc1 = runs["multi"]
  out_s, single = runs["single"]
  final_m, final_s = _final(out_m), _final(out_s)
  assert set(final_m) == set(final_s) and "train/loss" in final_m
  for k in final_s:
    np.testing.assert_allclose(final_m[k], final_s[k], rtol=1e-5, err_msg=k)
  rows_m, rows_s = _metrics(multi), _metrics(single)
  # One row per step: process 1 wrote nothing (no duplicated rows).
  assert [r["step"] for r in rows_m] == [r["step"] for r in rows_s]
  assert [r["step"] for r in rows_s] == list(range(1, STEPS + 1))
  for rm, rs in zip(rows_m, rows_s):
    for k in rs:
      np.testing.assert_allclose(rm[k], rs[k], rtol=1e-5, err_msg=k)
  # The job trained: the loss moved.
  assert rows_s[-1]["train/loss"] != rows_s[0]["train/loss"]


@pytest.mark.slow
def test_two_process_export_equals_one_process_export(runs):
  """FSDP shards live on both hosts: export gathers them, process 0 writes."""
  _, multi, _ = runs["multi"]
  _, single = runs["single"]
  t_m, t_s = testing.load_export(multi), testing.load_export(single)
  assert set(t_m) == set(t_s)
  for k in t_s:
    np.testing.assert_allclose(t_m[k], t_s[k], rtol=1e-5, atol=1e-6, err_msg=k)
