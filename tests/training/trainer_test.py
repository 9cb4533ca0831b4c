"""The training loop through `main`: resume, signals, export, errors."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from w2s_jax import config_lib, testing
from w2s_jax.data import synthetic, traces
from w2s_jax.training import metrics, trainer

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
TINY = [
    "--config.student.overrides.d_model=32",
    "--config.student.overrides.num_layers=1",
    "--config.student.overrides.mlp_dim=64",
    "--config.train.tensorboard=False",
]


@pytest.fixture(autouse=True)
def _sigint_not_ignored():
  # A test runner started in the background ignores SIGINT, and so would
  # its children (ignored signals survive exec); these tests send it.
  old = signal.getsignal(signal.SIGINT)
  if old is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, old)


def _main(workdir, config, *extra, check=True):
  cmd = [
      sys.executable,
      "-m",
      "w2s_jax.main",
      f"--config={config}",
      f"--workdir={workdir}",
      *TINY,
      *extra,
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
      cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )  # fmt: skip
  if check and proc.returncode != 0:
    raise AssertionError(
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
  return proc


def _error_line(stderr: str) -> str:
  """The one-line error of a failed run: no traceback, exactly one ``error:``
  line, and it is the last line (a library may log a warning before it)."""
  lines = stderr.strip().splitlines()
  errors = [ln for ln in lines if ln.startswith("error: ")]
  assert "Traceback" not in stderr and len(errors) == 1, stderr[-3000:]
  assert lines[-1] == errors[0], stderr[-3000:]
  return errors[0]


def _cfg(spec, **over):
  cfg = config_lib.load(os.path.join(ROOT, spec))
  cfg.student.overrides.d_model = 32
  cfg.student.overrides.num_layers = 1
  cfg.student.overrides.mlp_dim = 64
  cfg.train.tensorboard = False
  config_lib.set_keys(cfg, over)
  return cfg


def _hashes(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).digest()
  return out


def _steps(workdir):
  return [r["step"] for r in metrics.read_metrics(workdir)]


def test_resume_after_sigkill_is_exact_and_finished_workdirs_are_kept(
    tmp_path,
):
  straight, killed = str(tmp_path / "a"), str(tmp_path / "b")
  args = [
      "--config.train.steps=6",
      "--config.train.save_every=3",
      "--config.train.log_every=1",
  ]
  _main(straight, "configs/sft.py:runlocal", *args)
  proc = _main(
      killed,
      "configs/sft.py:runlocal",
      *args,
      "--config.train.debug_kill_at=5",
      check=False,
  )
  assert proc.returncode == -signal.SIGKILL
  assert sorted(os.listdir(os.path.join(killed, "checkpoints")))[:1] == ["3"]
  assert not os.path.exists(os.path.join(killed, "export"))
  assert _steps(killed) == [1, 2, 3, 4]  # 4 is past the checkpoint
  _main(killed, "configs/sft.py:runlocal", *args)
  a, b = testing.load_export(straight), testing.load_export(killed)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # One row per step, each the uninterrupted run's.
  assert metrics.read_metrics(killed) == metrics.read_metrics(straight)

  # A finished workdir: the same config says so and touches nothing;
  # another config is refused naming the key; neither changes a file.
  before = _hashes(killed)
  proc = _main(killed, "configs/sft.py:runlocal", *args)
  assert "is finished" in proc.stdout and '"final"' not in proc.stdout
  proc = _main(
      killed, "configs/sft.py:runlocal", *args, "--config.optim.lr=0.5",
      check=False,
  )  # fmt: skip
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = _error_line(proc.stderr)
  assert "optim.lr: 0.001 -> 0.5" in line and "new --workdir" in line
  assert _hashes(killed) == before


@pytest.mark.parametrize(
    "sig,code", [("SIGTERM", 143), ("SIGINT", 130)]
)  # fmt: skip
def test_signal_saves_exits_with_its_code_and_resumes(tmp_path, sig, code):
  wd = str(tmp_path / "t")
  args = [
      "--config.train.steps=8",
      "--config.train.save_every=100",
      "--config.train.log_every=1",
  ]
  proc = _main(
      wd,
      "configs/sft.py:runlocal",
      *args,
      "--config.train.debug_kill_at=2",
      f"--config.train.debug_kill_signal={sig}",
      check=False,
  )
  assert proc.returncode == code, proc.stderr[-2000:]
  assert '"final"' not in proc.stdout and "Traceback" not in proc.stderr
  # The signal lands after step 2; the loop saves at the next step boundary.
  last = proc.stderr.strip().splitlines()[-1]
  saved = re.fullmatch(
      rf"stopped by {sig}: saved step (\d+) in \S+; rerun the same command"
      " to resume.",
      last,
  )
  assert saved and int(saved.group(1)) in (2, 3), proc.stderr[-2000:]
  assert os.listdir(os.path.join(wd, "checkpoints")) == [saved.group(1)]
  if sig == "SIGINT":
    proc = _main(wd, "configs/sft.py:runlocal", *args)
    assert '"final"' in proc.stdout
    assert _steps(wd) == list(range(1, 9))


def test_distill_checkpoint_has_no_teacher_and_export_matches_transformers(
    tmp_path,
):
  import torch
  import transformers

  wd = str(tmp_path / "kd")
  cfg = _cfg(
      "configs/distill.py:runlocal", **{"train.steps": 2, "train.save_every": 2}
  )
  result = trainer.train_and_evaluate(cfg, wd)
  assert np.isfinite(result["train/loss"])
  import orbax.checkpoint as ocp

  # Read the raw saved tree, without any target structure.
  raw = ocp.StandardCheckpointer().restore(
      os.path.join(wd, "checkpoints", "2", "state")
  )
  assert set(raw) == {"params", "opt", "step"}
  n_params = sum(x.size for x in jax.tree.leaves(raw["params"]))
  n_all = sum(x.size for x in jax.tree.leaves(raw))
  assert n_params == transformer_params(wd)
  # params + Adam's two moments (+ counters): the teacher (d96, 3 layers) is nowhere.
  assert n_all < 3 * n_params + 16
  from w2s_jax import models

  ours = models.load_pretrained(os.path.join(wd, "export"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.join(wd, "export"), dtype=torch.float32
  )
  tokens = np.random.RandomState(0).randint(0, ours.cfg.vocab_size, (2, 10))
  ref = testing.hf_logits(hf, tokens)
  assert np.abs(np.asarray(ours(tokens)) - ref).max() <= 1e-4


def transformer_params(workdir):
  return sum(v.size for v in testing.load_export(workdir).values())


def _pairs_file(path, n=24):
  task = synthetic.TaskConfig()
  rows = []
  rng = np.random.default_rng(0)
  for p in synthetic.sample_problems(task, "train", n):
    rows.append(
        traces.PreferenceRecord(
            prompt=synthetic.prompt(p),
            chosen=synthetic.gold_trace(p),
            rejected=synthetic.noisy_trace(p, "terse", slip_prob=1.0, rng=rng),
        )
    )
  traces.write_preferences(path, rows)
  return path


@pytest.mark.parametrize("config", ["redi", "dpo", "simpo"])
def test_preference_methods_end_to_end(tmp_path, config):
  pairs = _pairs_file(str(tmp_path / "pairs.jsonl"))
  cfg = _cfg(
      f"configs/{config}.py:runlocal,pairs={pairs}", **{"train.steps": 3}
  )
  result = trainer.train_and_evaluate(cfg, str(tmp_path / "wd"))
  assert np.isfinite(result["train/loss"])
  rows = [json.loads(x) for x in open(tmp_path / "wd" / "metrics.jsonl")]
  assert rows[-1]["step"] == 3


def test_sft_on_trace_file_with_correct_filter(tmp_path):
  path = str(tmp_path / "t.jsonl")
  recs = [
      traces.SFTRecord(prompt="Q:1+1?", completion="A:1+1=2#2", correct=True),
      traces.SFTRecord(prompt="Q:2+2?", completion="A:2+2=5#5", correct=False),
  ] * 8
  traces.write_sft(path, recs)
  cfg = _cfg(
      f"configs/sft.py:runlocal,traces={path},correct_only",
      **{"train.steps": 1, "train.batch_size": 4},
  )
  assert (
      trainer.train_and_evaluate(cfg, str(tmp_path / "wd"))["sft/num_tokens"]
      > 0
  )


def test_nan_loss_exits_3_with_one_line_and_keeps_last_checkpoint(tmp_path):
  wd = str(tmp_path / "nan")
  proc = _main(
      wd,
      "configs/sft.py:runlocal",
      "--config.train.steps=6",
      "--config.train.save_every=2",
      "--config.optim.lr=1e30",
      "--config.optim.grad_clip=0.0",
      "--config.optim.schedule=constant",
      check=False,
  )
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  m = re.fullmatch(
      r"error: train/\w+ is (nan|inf) at step (\d); stopping. The last good"
      r" checkpoint is step (\d|None) in \S+; .*rerun to resume\.",
      last,
  )
  assert m, last
  steps = os.listdir(os.path.join(wd, "checkpoints"))
  assert all(s.isdigit() and int(s) < int(m.group(2)) for s in steps)
  assert m.group(3) == (max(steps, key=int) if steps else "None")


@pytest.mark.parametrize(
    "extra,msg",
    [
        (
            ["--config.optim.lrr=1"],
            r"unknown config key 'optim.lrr'.*'optim.lr'",
        ),
        (["--config.optim.lr=-1"], r"optim.lr=-1.0 is invalid"),
        (
            ["--config.loss.beta=1.5"],
            r"loss.beta=1.5 is invalid for method 'distill': it must be in"
            r" \[0, 1\]",
        ),
        (
            ["--config.teacher.hf_path=/nonexistent/ckpt"],
            r"/nonexistent/ckpt.*does not exist",
        ),
        (
            ["--config.teacher.overrides.vocab_size=8"],
            r"teacher has 8 \(teacher.overrides.vocab_size=8\).*has \d+ tokens",
        ),
    ],
)
def test_cli_bad_input(tmp_path, extra, msg):

  proc = _main(
      str(tmp_path / "w"), "configs/distill.py:runlocal", *extra, check=False
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert re.search(msg, proc.stderr), proc.stderr[-2000:]


def test_cli_workdir_not_writable(tmp_path):
  (tmp_path / "file").write_text("x")
  proc = _main(
      str(tmp_path / "file" / "wd"), "configs/sft.py:runlocal", check=False
  )
  assert proc.returncode == 2
  assert "error: --workdir" in proc.stderr and "is a file" in proc.stderr


def test_cli_teacher_tokenizer_mismatch(tmp_path):
  from w2s_jax.data import char_vocab

  other = str(tmp_path / "tok")
  char_vocab.save_char_tokenizer(other, alphabet="xyz0123456789")
  proc = _main(
      str(tmp_path / "w"),
      "configs/distill.py:runlocal",
      f"--config.teacher.tokenizer={other}",
      check=False,
  )
  assert proc.returncode == 2
  line = _error_line(proc.stderr)
  assert f"teacher.tokenizer={other}" in line, line
  assert "does not match data.tokenizer=char" in line, line


def test_cli_corrupt_checkpoint_and_tokenizer_files_are_one_line(tmp_path):
  from w2s_jax import models  # noqa: PLC0415

  ckpt = str(tmp_path / "teacher")
  models.save_pretrained(
      models.init_model(models.get_config("tiny-qwen2"), seed=1), ckpt
  )
  weights = os.path.join(ckpt, "model.safetensors")
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  tok = tmp_path / "tok"
  tok.mkdir()
  (tok / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
  for extra, path in [
      (f"--config.teacher.hf_path={ckpt}", weights),
      (f"--config.data.tokenizer={tok}", str(tok / "tokenizer.json")),
  ]:
    proc = _main(
        str(tmp_path / "w"), "configs/distill.py:runlocal", extra, check=False
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _error_line(proc.stderr)
    assert line.startswith("error: ") and path in line, line


@pytest.mark.slow  # ~25 s of CPU: one run, signalled from outside
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_from_another_process_saves_the_running_step(tmp_path, sig):
  import time  # noqa: PLC0415

  wd = str(tmp_path / "w")
  cmd = [
      sys.executable, "-m", "w2s_jax.main", "--config=configs/sft.py:runlocal",
      f"--workdir={wd}", *TINY, "--config.train.steps=100000",
      "--config.train.save_every=100000", "--config.train.log_every=1",
  ]  # fmt: skip
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen(
      cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True,
  )  # fmt: skip
  deadline = time.time() + 300
  while len(_steps(wd)) < 3 and time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.2)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + sig, err[-2000:]
  assert '"final"' not in out and "Traceback" not in err
  step = re.search(r"saved step (\d+) in", err.strip().splitlines()[-1])
  assert step, err[-2000:]
  assert os.listdir(os.path.join(wd, "checkpoints")) == [step.group(1)]
  assert _steps(wd)[-1] == int(step.group(1))
