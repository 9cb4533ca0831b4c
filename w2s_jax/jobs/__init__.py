"""Every job of ``python -m w2s_jax.main``, in one registry.

``config.job`` names the job; ``run`` imports its module only when it runs
(so ``main`` stays free of JAX until a job starts) and calls
``fn(config, workdir)``. ``w2s_jax.main`` and the study's stages both
dispatch through here.

  train        offline training on fixed data (training.trainer): SFT/W2SR,
               KD, REDI/DPO/SimPO, SSB
  rl           training on the student's own samples (rl.learner): GRPO
               family, KDRL, GKD, AMPO, on-policy distillation
  study        the weak-to-strong study (study.runner)
  eval         a model on the synthetic task, GSM8K or MATH-500
  sample, rsd  graded traces of a teacher / of reverse speculative decoding
  topk_cache   a teacher's top-k log-probs over SFT data
  ssb_data     semantic soft bootstrapping data

Each job writes its outputs atomically under the workdir and shows a
progress bar; the sampling loop the trace jobs share is
``jobs.sample_traces``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# name -> (module, function, what it does)
JOBS: dict[str, tuple[str, str, str]] = {
    "train": (
        "w2s_jax.training.trainer",
        "train_and_evaluate",
        "offline training on fixed data",
    ),
    "rl": (
        "w2s_jax.rl.learner",
        "train_and_evaluate",
        "training on the student's own samples",
    ),
    "study": ("w2s_jax.study.runner", "run", "the weak-to-strong study"),
    "eval": ("w2s_jax.jobs.evaluation", "run_eval", "evaluate a model"),
    "sample": ("w2s_jax.jobs.sampling", "run_plain", "a teacher's traces"),
    "rsd": ("w2s_jax.jobs.sampling", "run_rsd", "RSD traces"),
    "topk_cache": (
        "w2s_jax.jobs.topk_scoring",
        "run_topk_cache",
        "a teacher's top-k cache",
    ),
    "ssb_data": ("w2s_jax.jobs.ssb_data", "run_ssb_data", "SSB data"),
}


def names() -> tuple[str, ...]:
  return tuple(JOBS)


def get(job: str) -> Callable[[Any, str], Any]:
  """The function that runs ``job``; an unknown name raises ValueError."""
  if job not in JOBS:
    raise ValueError(
        f"config value job={job!r} is unknown; choose one of {list(JOBS)}"
        " (w2s_jax/jobs/__init__.py)."
    )
  module, fn, _ = JOBS[job]
  return getattr(importlib.import_module(module), fn)


def run(job: str, config: Any, workdir: str) -> Any:
  """Runs ``job`` on the locked config; returns the job's result."""
  return get(job)(config, workdir)
