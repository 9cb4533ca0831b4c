"""Two CPU processes x 2 devices run RL exactly like one process x 4 devices.

``launch/local_multiprocess.sh 2 2`` starts a real ``jax.distributed`` job
(gloo on 127.0.0.1) of ``configs/grpo.py`` (reference model, β_ref 0.04);
each process grades its half of the prompts and the rewards are combined.
The reference is the same config in one process with 4 devices: per-step
metrics must agree to 1e-5 and only process 0 may write. A grader that fails
to load on process 1 only stops both processes with one clear error, and
nothing is written.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from w2s_jax import testing

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
STEPS = 3
ARGS = [
    "--config=configs/grpo.py:runlocal",
    f"--config.train.steps={STEPS}",
    "--config.train.save_every=2",
    "--config.train.log_every=1",
    "--config.train.tensorboard=False",
    "--config.data.num_examples=32",
    "--config.rl.max_new_tokens=8",
    "--config.rl.reward_workers=0",
    "--config.student.overrides.d_model=32",
    "--config.student.overrides.num_layers=1",
    "--config.mesh_shape=(2,2,1)",
]
# A dense reward (share of '7's): non-constant groups from a random student,
# so the advantages, the loss and the updates are not zero.
REWARD = """
def sevens(completion, gold):
  return completion.count("7") / max(len(completion), 1)
"""
FAILING_GRADER = """
import os

if os.environ.get("JAX_PROCESS_ID") == "1":
  raise ImportError("grader dependency missing on this host")


def score(completion, gold):
  return 1.0
"""


def _env(**extra):
  env = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_PROCESS"))
  }
  env.update(PYTHON=sys.executable, JAX_PLATFORMS="cpu", **extra)
  return env


def _launch(args, logs, **env):
  return subprocess.Popen(
      ["bash", "launch/local_multiprocess.sh", "2", "2", "--", *args],
      cwd=ROOT,
      env=_env(LOG_DIR=str(logs), **env),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(ln) for ln in f if ln.strip()]


# Each case: extra arguments, and a metric that must be logged.
CASES = {
    "full": ([], "grpo/kl"),
    "lora": (["--config.lora.rank=4"], "grpo/kl"),
    # KDRL: the fused teacher scores every process's rollouts.
    "kdrl": (
        [
            "--config=configs/kdrl.py:runlocal",
            "--config.teacher.overrides.d_model=32",
            "--config.teacher.overrides.num_layers=1",
        ],
        "kdrl/kd",
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def runs(request, tmp_path_factory):
  """(multi, single, metric) of the full-model, LoRA (rank 4) and KDRL jobs."""
  extra, metric = CASES[request.param]
  tmp = tmp_path_factory.mktemp("rlmp")
  multi, single, logs = tmp / "multi", tmp / "single", tmp / "logs"
  logs.mkdir()
  (tmp / "rl_mp_reward.py").write_text(REWARD)
  args = [
      *ARGS,
      *extra,
      "--config.rl.reward=fn",
      "--config.rl.reward_fn=rl_mp_reward:sevens",
  ]
  if extra[:1] and extra[0].startswith("--config="):  # another config file
    args = [extra[0], *(a for a in args if a not in (ARGS[0], extra[0]))]
  path = f"{ROOT}:{tmp}"
  p_multi = _launch([*args, f"--workdir={multi}"], logs, PYTHONPATH=path)
  p_single = subprocess.Popen(
      [sys.executable, "-m", "w2s_jax.main", *args, f"--workdir={single}"],
      cwd=ROOT,
      env=_env(
          XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=path
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  out_m, err_m = p_multi.communicate(timeout=600)
  out_s, err_s = p_single.communicate(timeout=600)
  proc1 = logs / "proc1.log"
  proc1 = proc1.read_text() if proc1.exists() else ""
  assert p_single.returncode == 0, err_s[-3000:]
  assert p_multi.returncode == 0, err_m[-3000:] + "\nproc1:\n" + proc1[-3000:]
  return multi, single, metric


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
  multi, single, metric = runs
  rows_m, rows_s = _metrics(multi), _metrics(single)
  # One row per step: process 1 wrote nothing.
  assert [r["step"] for r in rows_m] == [r["step"] for r in rows_s]
  assert [r["step"] for r in rows_s] == list(range(1, STEPS + 1))
  for rm, rs in zip(rows_m, rows_s):
    keys = {k for k in rs if not k.startswith("time/")}
    assert keys <= set(rm)
    for k in keys:
      np.testing.assert_allclose(rm[k], rs[k], rtol=1e-5, atol=1e-7, err_msg=k)
  assert "rollout/reward_mean" in rows_s[-1] and metric in rows_s[-1]
  assert all(r["rollout/adv_abs_mean"] > 0 for r in rows_s)
  assert rows_s[-1]["train/loss"] != rows_s[0]["train/loss"]
  t_m, t_s = testing.load_export(multi), testing.load_export(single)
  for k in t_s:
    np.testing.assert_allclose(t_m[k], t_s[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_grader_failing_on_one_process_stops_every_process(tmp_path):
  mods, logs, wd = tmp_path / "mods", tmp_path / "logs", tmp_path / "w"
  mods.mkdir()
  logs.mkdir()
  (mods / "rl_mp_grader.py").write_text(FAILING_GRADER)
  args = [
      *ARGS,
      "--config.rl.reward=fn",
      "--config.rl.reward_fn=rl_mp_grader:score",
      f"--workdir={wd}",
  ]
  p = _launch(args, logs, PYTHONPATH=f"{ROOT}:{mods}")
  _, err = p.communicate(timeout=300)
  proc1 = (logs / "proc1.log").read_text()
  assert p.returncode != 0
  assert "grader dependency missing on this host" in err
  for text in (err, proc1):  # the same one-line error on both processes
    assert (
        "failed on 1 of 2 processes (process 1: ValueError: rl.reward_fn="
        in text
    ), text[-2000:]
  assert not os.path.exists(wd / "metrics.jsonl")
  assert not os.path.exists(wd / "checkpoints") or not os.listdir(
      wd / "checkpoints"
  )


def test_prompts_not_divisible_by_processes_is_a_clear_error(monkeypatch):
  from w2s_jax.rl import multiprocess  # noqa: PLC0415

  monkeypatch.setattr(multiprocess.jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match=r"rl.prompts_per_step=4 is not div"):
    multiprocess.check_divisible(4)
  multiprocess.check_divisible(6)
