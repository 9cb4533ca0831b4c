r"""The weak-to-strong study on the synthetic task (issue 7, 14): ``make demo``.

  python -m w2s_jax.main --config=configs/study.py --workdir=demo_out
  python -m w2s_jax.main --config=configs/study.py:quick --workdir=/tmp/q
  python -m w2s_jax.main --config=configs/study.py:seeds=5 --workdir=demo5

Models (per seed, each a cached stage; sizes are ``(d_model, layers)``):

* weak teacher: trained on ``terse`` traces of a perturbed fact table with
  random slips (``world.weak_fact_error_rate``, ``world.weak_slip_prob``),
  so it is weak by construction (right format, wrong knowledge);
* strong teacher: trained on gold ``terse`` traces;
* strong student: pretrained only on the ``latent`` notation of the same
  computation (``c:9*0+0.9*0=0,0+0=0 a0``): it has the skill, not the asked
  format; its accuracy on latent prompts is the ceiling row;
* small student: trained on ``postfix`` traces (its own notation, which
  writes each step's operands: it copies them right and is accurate);
* RSD teacher: trained on ``running`` traces (``world.rsd_teacher_styles``):
  results only, skipping the operands that a small model needs to write
  down, and on ``postfix``, so that it can accept the small student's
  tokens; about half of its samples are ``running``. The same small model trained on ``running``
  alone is far less accurate than on ``postfix`` (docs/study.md).

Every answer is graded in any notation of the task (skill) and, apart, for
the asked ``terse`` format (``format`` column); the chance row is what
always answering the most common answer scores. Models are evaluated on
``eval.num_problems`` held-out test problems; learning rates are chosen on
a separate validation split, never on test.

Arms (one row per model; a model that serves several arms is one row that
says so):

(a) W2SR: the strong student SFT'd on the weak teacher's sampled traces, all
    (W2SR) vs correct only (W2SR-P, also the SFT stage of (c) and (d)); the
    RGR reference is GRPO on the untrained student, reported with its gain
    (RGR is undefined below ``claims.rgr_min_gain``).
(b) RSD: the small student SFT'd on the RSD teacher's correct traces vs
    on RSD traces (``sample.rsd_k`` samples per problem, the shortest
    passing one kept), both cut to the same count, same steps.
(c) From W2SR-P: REDI, DPO, SimPO on the weak teacher's (correct,
    incorrect) pairs, each at the learning rate of ``lr_sweep`` that scores
    best on validation.
(d) From W2SR-P, with the strong teacher: offline KD on its traces, GRPO,
    KDRL (constant and annealed beta), KD-only (on-policy reverse KL), GKD
    (lambda 0 and 1), all with the same steps, ``beta_ref`` and sequences
    per step.

Seeds are independent and run in parallel processes (``workers``; 0 = one
per CPU core); ``results.json`` does not depend on how many.

``results.json`` (a function of the config: no wall times; those go to
``timings.json``), ``results.md`` and ``results.png`` (one panel per claim
of ``configs/study.py``: the two models it compares, their 95% CIs, the
paired difference and the verdict) are written to the workdir.
"""

from __future__ import annotations

import os
import time
from typing import Any

from w2s_jax.study import report
from w2s_jax.study import stages as st
from w2s_jax.study.seed import Seed

ARM_GROUPS = ("a", "b", "c", "d")


def _compilation_cache(workdir: str) -> None:
  st.compilation_cache(os.path.join(workdir, ".jax_cache"))


def check(config: Any) -> tuple[str, ...]:
  """Validates the study's arguments; returns the arm groups.

  Raises:
    ValueError: naming the argument (``arms``, ``seeds``, ``grading``).
  """
  groups = tuple(ch for ch in str(config.arms) if ch not in ", ")
  bad = sorted(set(groups) - set(ARM_GROUPS))
  if bad or not groups:
    raise ValueError(
        f"study arms={config.arms!r}: unknown arm group(s)"
        f" {''.join(bad) or '(none given)'}; give letters of"
        f" {''.join(ARM_GROUPS)}, e.g. --config=configs/study.py:arms=ac."
    )
  seeds = int(config.seeds)
  if seeds < 1:
    raise ValueError(
        f"study seeds={seeds}: must be >= 1, e.g."
        " --config=configs/study.py:seeds=5."
    )
  if int(config.get("workers", 1)) < 0:
    raise ValueError(
        f"study workers={config.workers}: must be >= 0 (0: one per CPU"
        " core), e.g. --config=configs/study.py:seeds=5,workers=2."
    )
  if str(config.grading) not in ("any", "strict"):
    raise ValueError(
        f"study grading={config.grading!r}: choose 'any' (an answer in any"
        " notation counts) or 'strict' (only the asked terse notation)."
    )
  return groups


def _one_seed(
    config: Any, workdir: str, seed: int, groups, log=None, workers: int = 1
):
  """Runs one seed; returns ``(rows, outcomes, stage timings)``.

  ``workers`` > 1 trains the seed's base models in that many processes.
  """
  if log is None:  # a worker process: its own clock, lines tagged by seed
    start = time.time()

    def log(line: str) -> None:
      print(
          f"[study seed{seed} {time.time() - start:7.1f}s] {line}", flush=True
      )

    _compilation_cache(workdir)
  seed_run = Seed(config, workdir, seed, log)
  rows = seed_run.run(groups, workers)
  return rows, seed_run.outcomes, seed_run.stages.timings


def num_workers(config: Any) -> int:
  """Processes at once: ``workers``, or (0) one per CPU core."""
  workers = int(config.get("workers", 1))
  if workers == 0:
    workers = os.cpu_count() or 1
  return max(1, workers)


def _run_seeds(config: Any, workdir: str, groups, log):
  """Every seed's ``(rows, outcomes, timings)``, in seed order.

  Seeds are independent (each its own stages and RNG streams), so with
  ``workers > 1`` they run in separate processes (one XLA CPU client each:
  the models are too small to keep more than one core busy); the results
  are gathered in seed order, so the output does not depend on which seed
  finishes first.
  """
  seeds = range(int(config.seeds))
  workers = num_workers(config)
  if len(seeds) == 1:  # parallel where it can be: the base models
    return [_one_seed(config, workdir, 0, groups, log, workers)]
  if workers == 1:
    return [_one_seed(config, workdir, s, groups, log) for s in seeds]
  workers = min(workers, len(seeds))
  log(f"{len(seeds)} seeds on {workers} worker processes")
  with st.process_pool(workers) as ex:
    futures = [ex.submit(_one_seed, config, workdir, s, groups) for s in seeds]
    return [f.result() for f in futures]


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the study; writes and prints the results table."""
  groups = check(config)
  os.makedirs(workdir, exist_ok=True)
  _compilation_cache(workdir)
  start = time.time()

  def log(line: str) -> None:
    print(f"[study {time.time() - start:7.1f}s] {line}", flush=True)

  rows, outcomes, timings = [], [], {}
  for s, (seed_rows, seed_outcomes, seed_timings) in enumerate(
      _run_seeds(config, workdir, groups, log)
  ):
    rows.extend(seed_rows)
    outcomes.append(seed_outcomes)
    timings[f"seed{s}"] = seed_timings
  # How many processes ran it is not part of what was measured.
  measured = {k: v for k, v in config.to_dict().items() if k != "workers"}
  result = report.write(workdir, rows, outcomes, config=measured)
  wall = time.time() - start
  report.write_timings(
      workdir, {"wall_seconds": wall, "stage_seconds": timings}
  )
  print(result["table"])
  print(result["claims_table"])
  print(
      f"\nSaved {workdir}/results.json, results.md, results.png,"
      f" timings.json ({wall:.0f}s)"
  )
  return {"wall_seconds": wall, "rows": float(len(rows))}
