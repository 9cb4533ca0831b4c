r"""Expands a config's ``sweep(add)`` into ``w2s_jax.main`` command lines.

  python launch/sweep.py --config=configs/distill.py:runlocal \
      --workdir=/tmp/kd_sweep                      # print the commands
  python launch/sweep.py --config=configs/distill.py:runlocal \
      --workdir=/tmp/kd_sweep --run                # run them, one by one
  python launch/sweep.py --config=configs/distill.py --workdir=gs://b/kd \
      --prefix='launch/tpu_vm.sh run --' -- --config.train.steps=2000

Each ``add(**overrides)`` call of the config file's ``sweep`` becomes one
job: ``--config=<the same spec>``, ``--workdir=<workdir>/<NN>_<overrides>``,
``--config.<key>=<value>`` per override, then the arguments after ``--``
(shared by every job). Every key is checked against the loaded config
first, so a typo in a sweep fails here, not in job 7. With ``--prefix`` the
command is the prefix plus the main arguments (the launchers add
``python -m w2s_jax.main`` themselves); without it, ``$PYTHON -m
w2s_jax.main``. Dry run by default; ``--run`` runs the jobs in order and
stops at the first failure (``--keep-going`` runs the rest).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from anywhere
  sys.path.insert(0, ROOT)

from w2s_jax import config_lib  # noqa: E402


def format_value(value: Any) -> str:
  """A ``--config.key=`` value in the syntax ml_collections parses back."""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (tuple, list)):
    inner = ",".join(format_value(v) for v in value)
    return f"({inner},)" if len(value) == 1 else f"({inner})"
  return str(value)


def job_name(index: int, overrides: dict[str, Any]) -> str:
  """``01_divergence=rkl``: index, then last key part=value; path-safe."""
  parts = [
      f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in overrides.items()
  ]
  name = f"{index:02d}_" + "_".join(parts) if parts else f"{index:02d}"
  return re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)


def expand(config_spec: str) -> list[dict[str, Any]]:
  """The overrides of every ``add(...)`` call of the config's ``sweep``."""
  path = config_spec.partition(":")[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"config file {path!r} not found; pass --config=configs/<name>.py."
    )
  module_spec = importlib.util.spec_from_file_location("_w2s_sweep", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise ValueError(
        f"config file {path!r} defines no sweep(add); add one beside"
        " get_config (see configs/distill.py)."
    )
  jobs: list[dict[str, Any]] = []
  module.sweep(lambda **kw: jobs.append(dict(kw)))
  if not jobs:
    raise ValueError(f"sweep(add) in {path!r} added no jobs.")
  return jobs


def commands(
    config_spec: str,
    workdir: str,
    extra: Sequence[str] = (),
    prefix: Sequence[str] | None = None,
    python: str = "python",
) -> list[list[str]]:
  """One argv per job (validated against the loaded config)."""
  cfg = config_lib.load(config_spec)
  out = []
  for i, overrides in enumerate(expand(config_spec)):
    args = [
        f"--config={config_spec}",
        f"--workdir={workdir.rstrip('/')}/{job_name(i, overrides)}",
        *(f"--config.{k}={format_value(v)}" for k, v in overrides.items()),
        *extra,
    ]
    try:
      config_lib.check_override_keys(cfg, args)
    except ValueError as e:
      raise ValueError(f"sweep job {i} ({overrides}): {e}") from None
    head = list(prefix) if prefix else [python, "-m", "w2s_jax.main"]
    out.append(head + args)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1 :]
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
  p.add_argument("--workdir", required=True, help="parent of the job dirs")
  p.add_argument(
      "--prefix",
      default="",
      help="launcher command, e.g. 'launch/local_multiprocess.sh 2 2 --'",
  )
  p.add_argument("--python", default=os.environ.get("PYTHON", "python"))
  p.add_argument("--run", action="store_true", help="run (default: print)")
  p.add_argument("--keep-going", action="store_true")
  a = p.parse_args(argv)
  try:
    cmds = commands(
        a.config, a.workdir, extra, shlex.split(a.prefix) or None, a.python
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  failed = 0
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if not a.run:
      continue
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
      failed += 1
      print(
          f"error: job exited with status {rc}: {shlex.join(cmd)}",
          file=sys.stderr,
      )
      if not a.keep_going:
        return rc
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
