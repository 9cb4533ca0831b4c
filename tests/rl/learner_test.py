"""The RL loop through `main.run_job`: every config, resume, learning, errors."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from w2s_jax import config_lib, main, testing
from w2s_jax.data import char_vocab
from w2s_jax.training import metrics

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
REWARDS = """
import sys


def sevens(completion, gold):
  return completion.count("7") / max(len(completion), 1)


def faulty(completion, gold):
  h = sum(map(ord, completion)) % 16
  if h == 0:
    while True:  # hung: only the deadline's kill stops it
      pass
  if h == 1:
    raise RuntimeError("grader bug")
  # 1.0 only in a worker without JAX: proves where grading ran.
  return 0.0 if "jax" in sys.modules else 1.0
"""


def _cfg(spec, **over):
  cfg = config_lib.load(os.path.join(ROOT, spec))
  for section in ("student", "teacher"):
    ov = cfg[section].overrides
    ov.d_model, ov.num_layers, ov.mlp_dim = 32, 1, 64
  cfg.train.tensorboard = False
  cfg.data.num_examples = 32
  cfg.rl.max_new_tokens = 12
  config_lib.set_keys(cfg, over)
  return cfg


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("configs/grpo.py:runlocal", marks=pytest.mark.slow),
        pytest.param(
            "configs/kdrl.py:runlocal,mask=group,beta=const",
            marks=pytest.mark.slow,
        ),
        pytest.param("configs/gkd.py:runlocal", marks=pytest.mark.slow),
        pytest.param("configs/ampo.py:runlocal", marks=pytest.mark.slow),
        pytest.param(
            "configs/grpo.py:variant=dapo,reward=surrogate,runlocal",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_config_runs_writes_metrics_exports_and_resumes(tmp_path, spec):
  wd = str(tmp_path / "run")
  cfg = _cfg(spec, **{"train.steps": 2, "train.save_every": 1})
  last = main.run_job(cfg, wd)
  rows = metrics.read_metrics(wd)
  assert [r["step"] for r in rows] == [1, 2]
  for key in ("train/loss", "time/sample", "time/update", "time/host_share"):
    assert key in rows[-1], key
  method = cfg.method
  if method != "gkd":
    for key in ("rollout/reward_mean", "rollout/accuracy", "grpo/clip_frac"):
      assert key in rows[-1] or key.replace("grpo", method) in rows[-1], key
  if method == "kdrl":
    assert rows[-1]["kdrl/beta"] == pytest.approx(5e-3)
    assert "kdrl/kd" in rows[-1]
  assert np.isfinite(last["train/loss"])
  first = testing.load_export(wd)
  assert not any("teacher" in k for k in first)
  # Resume: two more steps continue from the checkpoint of step 2.
  cfg = _cfg(spec, **{"train.steps": 4, "train.save_every": 1})
  main.run_job(cfg, wd)
  rows = metrics.read_metrics(wd)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "4"
  assert any(
      not np.array_equal(first[k], v)
      for k, v in testing.load_export(wd).items()
  )


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
  straight, parts = str(tmp_path / "a"), str(tmp_path / "b")
  over = {"train.save_every": 1, "optim.schedule": "constant"}
  main.run_job(
      _cfg("configs/grpo.py:runlocal", **over, **{"train.steps": 4}), straight
  )
  main.run_job(
      _cfg("configs/grpo.py:runlocal", **over, **{"train.steps": 2}), parts
  )
  main.run_job(
      _cfg("configs/grpo.py:runlocal", **over, **{"train.steps": 4}), parts
  )
  a, b = testing.load_export(straight), testing.load_export(parts)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow  # ~70 s on 2 shared CPU cores (compiles, 9 steps, resume)
def test_grpo_learns_a_trivial_reward_and_resumes(tmp_path, monkeypatch):
  mod = tmp_path / "mods"
  mod.mkdir()
  (mod / "rl_trainer_rewards.py").write_text(textwrap.dedent(REWARDS))
  monkeypatch.syspath_prepend(str(mod))
  over = {
      "train.save_every": 4,
      "optim.lr": 3e-2,
      "rl.reward": "fn",
      "rl.reward_fn": "rl_trainer_rewards:sevens",
      "rl.group_size": 8,
      "rl.prompts_per_step": 4,
      "rl.max_new_tokens": 4,
  }
  spec = "configs/grpo.py:variant=drgrpo,runlocal"
  wd = str(tmp_path / "w")
  main.run_job(_cfg(spec, **over, **{"train.steps": 8}), wd)
  rows = metrics.read_metrics(wd)
  r = [row["rollout/reward_mean"] for row in rows]
  assert len(r) == 8
  assert np.mean(r[-2:]) > np.mean(r[:2]) + 0.2, r
  for key in ("train/loss", "time/sample", "time/update", "time/host_share"):
    assert key in rows[-1], key
  for key in ("rollout/accuracy", "grpo/clip_frac", "reward/failures"):
    assert key in rows[-1], key
  first = testing.load_export(wd)
  # Resume: one more step from the checkpoint of step 8.
  main.run_job(_cfg(spec, **over, **{"train.steps": 9}), wd)
  assert [row["step"] for row in metrics.read_metrics(wd)] == list(range(1, 10))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "9"
  assert any(
      not np.array_equal(first[k], v)
      for k, v in testing.load_export(wd).items()
  )


@pytest.mark.slow
def test_hung_and_raising_graders_in_workers_do_not_stop_a_run(
    tmp_path, monkeypatch
):
  mod = tmp_path / "mods"
  mod.mkdir()
  (mod / "rl_trainer_rewards.py").write_text(textwrap.dedent(REWARDS))
  monkeypatch.syspath_prepend(str(mod))
  timeout = 0.5
  over = {
      "train.steps": 2,
      "rl.reward": "fn",
      "rl.reward_fn": "rl_trainer_rewards:faulty",
      "rl.reward_timeout_s": timeout,
      "rl.max_new_tokens": 6,
  }
  cfg = _cfg("configs/grpo.py:runlocal", **over)
  assert int(cfg.rl.reward_workers) >= 1  # the default: worker processes
  wd = str(tmp_path / "w")
  last = main.run_job(cfg, wd)
  rows = metrics.read_metrics(wd)
  assert [r["step"] for r in rows] == [1, 2]
  assert np.isfinite(last["train/loss"])
  failures = sum(r["reward/failures"] for r in rows)
  graded = sum(r["reward/count"] for r in rows)
  assert 0 < failures < graded / 2
  # Every grader that neither hung nor raised ran without JAX: reward 1.
  for r in rows:
    np.testing.assert_allclose(
        r["rollout/accuracy"], 1 - r["reward/failure_frac"], atol=1e-6
    )
  # A hung grader cost one deadline, not the run.
  assert max(r["time/grade"] for r in rows) >= timeout
  assert max(r["time/grade"] for r in rows) < 60


def test_group_size_one_with_std_normalisation_is_rejected(tmp_path):
  cfg = _cfg("configs/grpo.py:runlocal", **{"rl.group_size": 1})
  with pytest.raises(ValueError, match=r"rl.group_size=1 .*group_size=8"):
    main.run_job(cfg, str(tmp_path))
  cfg = _cfg("configs/grpo.py:runlocal", **{"rl.overlong_buffer": 99})
  with pytest.raises(ValueError, match="rl.overlong_buffer=99 exceeds"):
    main.run_job(cfg, str(tmp_path))
  cfg = _cfg("configs/grpo.py:runlocal", **{"train.micro_batches": 3})
  with pytest.raises(ValueError, match="divisible by train.micro_batches=3"):
    main.run_job(cfg, str(tmp_path))
  cfg = _cfg("configs/grpo.py:runlocal", **{"loss.epsilon_low": 1.5})
  with pytest.raises(ValueError, match=r"loss.epsilon_low=1.5 is invalid"):
    main.run_job(cfg, str(tmp_path))


def test_bad_reward_fn_fails_before_workers_start(tmp_path):
  over = {"rl.reward": "fn", "rl.reward_fn": "no_such_mod_q:f"}
  cfg = _cfg("configs/grpo.py:runlocal", **over)
  with pytest.raises(
      ValueError, match=r"reward_fn='no_such_mod_q:f' cannot be"
  ):
    main.run_job(cfg, str(tmp_path))


def test_teacher_with_another_tokenizer_is_rejected(tmp_path):
  other = char_vocab.save_char_tokenizer(str(tmp_path / "tok"), "abc0123")
  cfg = _cfg("configs/kdrl.py:runlocal", **{"teacher.tokenizer": str(other)})
  with pytest.raises(ValueError, match="tokenizers are not compatible"):
    main.run_job(cfg, str(tmp_path / "w"))


def test_config_arguments_are_checked():
  with pytest.raises(ValueError, match="variant='ppo'"):
    config_lib.load(os.path.join(ROOT, "configs/grpo.py:variant=ppo"))
  with pytest.raises(ValueError, match="kd='k4'"):
    config_lib.load(os.path.join(ROOT, "configs/kdrl.py:kd=k4"))
  c = config_lib.load(
      os.path.join(ROOT, "configs/kdrl.py:kd=k1reward,beta=const")
  )
  assert c.loss.kd_estimator == "k1" and c.loss.kd_beta_decay == 0.0
  c = config_lib.load(os.path.join(ROOT, "configs/grpo.py:variant=dapo"))
  assert (c.loss.epsilon_low, c.loss.epsilon_high, c.loss.dual_clip) == (
      0.2,
      0.28,
      10.0,
  )
  assert c.rl.dynamic_sampling and c.loss.agg == "token-mean"
  c = config_lib.load(os.path.join(ROOT, "configs/gkd.py"))
  assert (c.loss.lambda_on_policy, c.loss.beta, c.loss.divergence) == (
      0.5,
      0.5,
      "jsd",
  )
  for name in ("grpo", "kdrl", "gkd", "ampo"):
    c = config_lib.load(os.path.join(ROOT, f"configs/{name}.py"))
    assert c.job == "rl"
    config_lib.validate(c)


def test_rl_failures_surface_through_main_cli(tmp_path):

  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "w2s_jax.main",
          "--config=configs/grpo.py:runlocal",
          f"--workdir={tmp_path}",
          "--config.rl.group_size=1",
      ],
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2
  assert "rl.group_size=1" in proc.stderr


@pytest.mark.slow  # ~50 s of CPU: three RL runs (compiles twice)
def test_rl_sigterm_saves_stops_with_143_and_resumes_with_its_config(tmp_path):
  from w2s_jax.training import loop  # noqa: PLC0415
  from w2s_jax.training import workdir as workdir_lib  # noqa: PLC0415

  wd = str(tmp_path / "w")
  over = {
      "train.steps": 3,
      "train.save_every": 10,
      "train.log_every": 1,
      "rl.prompts_per_step": 2,
      "rl.group_size": 2,
      "rl.max_new_tokens": 4,
      "rl.reward_workers": 0,
  }
  kill = {"train.debug_kill_at": 1, "train.debug_kill_signal": "SIGTERM"}
  with pytest.raises(loop.Stopped) as e:  # a real SIGTERM to this process
    main.run_job(_cfg("configs/grpo.py:runlocal", **over, **kill), wd)
  assert e.value.exit_code == 143
  saved = e.value.step
  assert os.listdir(os.path.join(wd, "checkpoints")) == [str(saved)]
  assert [r["step"] for r in metrics.read_metrics(wd)] == list(
      range(1, saved + 1)
  )
  with pytest.raises(workdir_lib.WorkdirError, match="rl.group_size: 2 -> 4"):
    main.run_job(
        _cfg("configs/grpo.py:runlocal", **{**over, "rl.group_size": 4}), wd
    )
  main.run_job(_cfg("configs/grpo.py:runlocal", **over), wd)
  assert [r["step"] for r in metrics.read_metrics(wd)] == [1, 2, 3]
