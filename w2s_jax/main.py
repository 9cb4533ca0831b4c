r"""The one entry point: ``python -m w2s_jax.main --config=... --workdir=...``.

  python -m w2s_jax.main --config=configs/sft.py:runlocal --workdir=/tmp/sft \
      --config.optim.lr=3e-4

The config is loaded locked: an unknown ``--config.key`` or an out-of-range
value fails before any model is built, with a message naming the key. On a
TPU VM pod slice or a SLURM GPU allocation, ``jax.distributed.initialize()``
runs first (``config.distributed``: 'auto' detects the cluster, 'on' forces,
'off' skips). One job at a time per workdir (``workdir.WorkdirLock``, taken
by process 0).

Exit codes (README, "Exit codes"; ``training.loop``): 0 finished; 2 user
error (one line); 3 stopped on a non-finite loss after keeping the last good
checkpoint (one line); 130 / 143 SIGINT / SIGTERM after saving a checkpoint
(no ``final`` line). Everything else raises.
"""

from __future__ import annotations

import json
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from w2s_jax import config_lib
from w2s_jax.training import loop  # stdlib only: no jax at import

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/sft.py:runlocal.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")

EXIT_USER_ERROR = 2
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    KeyError,
    TimeoutError,  # an unreachable jax.distributed coordinator
)


def run_job(config, workdir: str):
  """Dispatches ``config.job`` through the job registry (``w2s_jax.jobs``)."""
  from w2s_jax import jobs  # noqa: PLC0415

  return jobs.run(str(config.get("job", "train")), config, workdir)


def _main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty
  if not workdir:
    raise ValueError("--workdir is required (an output directory).")
  config_lib.validate(config)
  config_lib.prepare_workdir(workdir)
  # Imported here, not at module level: it imports jax, and every worker
  # process spawned from `python -m w2s_jax.main` (graders, math-verify)
  # re-imports this module.
  from w2s_jax import distributed  # noqa: PLC0415
  from w2s_jax.training import workdir as workdir_lib  # noqa: PLC0415

  distributed.maybe_initialize(config)
  # Process 0 alone holds the lock: the others follow its collectives, and
  # per-process locks on a shared filesystem could only disagree.
  lock = workdir_lib.WorkdirLock(workdir)
  if distributed.is_primary():
    lock.acquire()
  try:
    result = run_job(config, workdir)
  finally:
    lock.release()
  if isinstance(result, dict) and result and distributed.is_primary():
    print(json.dumps({"final": result}, sort_keys=True, default=str))


class _Terminated(Exception):  # noqa: N818
  """SIGTERM outside a training loop (which saves first: ``loop``)."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise _Terminated


def main() -> None:
  """Pre-checks override keys (readable errors), then runs under absl."""
  argv = sys.argv
  spec = next(
      (a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None
  )
  # Until a training loop installs its own handlers (which save first),
  # SIGTERM and SIGINT end the run with their exit code and one line.
  if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
    signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    if spec is not None:
      config_lib.check_override_keys(config_lib.load(spec), argv[1:])
    app.run(_main, argv=argv)
  except USER_ERRORS as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except FloatingPointError as e:  # loop.NonFinite: the checkpoint is kept
    print(f"error: {e}", file=sys.stderr)
    sys.exit(loop.EXIT_NON_FINITE)
  except KeyboardInterrupt:
    print(
        "interrupted (SIGINT): stopped without saving this step; checkpoints"
        " already written are kept (rerun to resume from the last one).",
        file=sys.stderr,
    )
    sys.exit(EXIT_SIGINT)
  except _Terminated:
    print(
        "terminated (SIGTERM) outside a training step: nothing new saved;"
        " checkpoints already written are kept (rerun to resume).",
        file=sys.stderr,
    )
    sys.exit(EXIT_SIGTERM)
  except loop.Stopped as e:
    print(f"stopped by {e}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  main()
