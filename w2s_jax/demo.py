r"""`make demo`: the weak-to-strong study of ``configs/study.py`` (CPU).

  python -m w2s_jax.demo --workdir=demo_out [--arg=quick]

A thin wrapper kept for old commands; it is the same as

  python -m w2s_jax.main --config=configs/study.py[:ARG] --workdir=demo_out

See ``w2s_jax/study/runner.py`` for the stages and docs/study.md for the results.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from absl import logging as absl_logging

from w2s_jax import config_lib

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Output directory.")
_ARG = flags.DEFINE_string(
    "arg", "", "configs/study.py argument, e.g. 'quick' or 'seeds=3'."
)


def _main(argv):
  del argv
  from w2s_jax import study  # noqa: PLC0415
  from w2s_jax.study import stages  # noqa: PLC0415

  absl_logging.set_verbosity(absl_logging.WARNING)
  spec = os.path.join(stages.configs_dir(), "study.py")
  config = config_lib.load(spec + (f":{_ARG.value}" if _ARG.value else ""))
  config_lib.prepare_workdir(_WORKDIR.value)
  study.run(config, _WORKDIR.value)


def main() -> None:
  try:
    app.run(_main)
  except (ValueError, FileNotFoundError, PermissionError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
