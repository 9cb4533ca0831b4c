r"""`make demo`: a small weak-to-strong SFT study on the synthetic task (CPU).

  python -m w2s_jax.demo --workdir=demo_out [--steps=400] [--quick]

A student is fine-tuned (``configs/sft.py`` through the trainer) on traces of
the synthetic modular-arithmetic task written by

  * a gold solver (the ceiling),
  * a weak teacher whose fact table is 30% wrong, all traces (W2SR),
  * the same weak teacher, correct traces only (W2SR-P),

and each student is evaluated through the jitted sampler on held-out
problems (greedy answer accuracy and per-step accuracy, which shows whether
the student copied the teacher's wrong facts). Every stage is cached in the
workdir: a rerun resumes. The table is printed and saved as ``results.md`` /
``results.json``, the bar chart as ``results.png``.

This is the end-to-end path available today (trainer, checkpoints, sampler,
grading); the full study of issue 7 (latent-skill students, RSD, REDI, RL)
builds on the same pieces.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

from w2s_jax import config_lib

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Output directory.")
_STEPS = flags.DEFINE_integer("steps", 500, "SFT steps per student.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes (a smoke run).")
_EVAL = flags.DEFINE_integer("eval_problems", 300, "Held-out problems.")

ARMS = (
    ("gold traces", dict(fact_error_rate=0.0, filter="all")),
    (
        "weak teacher, all traces (W2SR)",
        dict(fact_error_rate=0.3, filter="all"),
    ),
    (
        "weak teacher, correct only (W2SR-P)",
        dict(fact_error_rate=0.3, filter="correct"),
    ),
)


def _config(arm: dict, steps: int, quick: bool):
  c = config_lib.load(os.path.join(_configs_dir(), "sft.py"))
  c.train.steps = steps
  c.train.batch_size = 64
  c.train.save_every = steps
  c.train.log_every = 50
  c.train.tensorboard = False
  c.optim.lr = 2e-3
  c.optim.warmup_frac = 0.05
  c.data.num_examples = 2000
  c.data.error_seed = 1
  for k, v in arm.items():
    c.data[k] = v
  d = 48 if quick else 128
  c.student.overrides.d_model = d
  c.student.overrides.num_heads = 4
  c.student.overrides.num_kv_heads = 2
  c.student.overrides.head_dim = d // 4
  c.student.overrides.mlp_dim = 4 * d
  c.student.overrides.num_layers = 2 if quick else 3
  c.student.overrides.max_len = 64
  return c


def _configs_dir() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  for cand in (
      os.path.join(os.path.dirname(here), "configs"),
      os.path.join(os.getcwd(), "configs"),
  ):
    if os.path.isdir(cand):
      return cand
  raise FileNotFoundError(
      "configs/ not found next to the package or in the cwd."
  )


def run(
    workdir: str, steps: int, quick: bool, eval_problems: int
) -> list[dict]:
  from w2s_jax import models  # noqa: PLC0415
  from w2s_jax.data import synthetic  # noqa: PLC0415
  from w2s_jax.evals import evaluate  # noqa: PLC0415
  from w2s_jax.training import inputs, trainer  # noqa: PLC0415

  os.makedirs(workdir, exist_ok=True)
  problems = evaluate.synthetic_problems(synthetic.TaskConfig(), eval_problems)
  results = []
  for i, (name, arm) in enumerate(ARMS):
    stage = os.path.join(workdir, f"arm{i}")
    summary_path = os.path.join(stage, "eval", "summary.json")
    if not os.path.exists(summary_path):
      cfg = _config(arm, steps, quick)
      print(f"[{i + 1}/{len(ARMS)}] SFT on {name}: {steps} steps")
      trainer.train_and_evaluate(cfg, stage)
      tok = inputs.load_tokenizer("char", stage)
      model = models.load_pretrained(os.path.join(stage, "export"))
      summary, rows = evaluate.evaluate(
          model,
          tok,
          problems,
          task="synthetic",
          fmt="raw",
          max_new_tokens=32,
          batch_size=100,
      )
      evaluate.write_results(os.path.join(stage, "eval"), summary, rows)
    with open(summary_path) as f:
      summary = json.load(f)
    results.append({"arm": name, **summary})
  return results


def report(workdir: str, results: list[dict]) -> str:
  lines = [
      "| student trained on | answer acc (pass@1) | step acc |",
      "|---|---|---|",
  ]
  for r in results:
    lines.append(
        f"| {r['arm']} | {r['pass@1']:.3f} | {r['step_accuracy']:.3f} |"
    )
  table = "\n".join(lines)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(7, 3.5))
  x = range(len(results))
  ax.bar(
      [i - 0.2 for i in x],
      [r["pass@1"] for r in results],
      0.4,
      label="answer acc",
  )
  ax.bar(
      [i + 0.2 for i in x],
      [r["step_accuracy"] for r in results],
      0.4,
      label="step acc",
  )
  ax.set_xticks(
      list(x), [r["arm"].replace(", ", ",\n") for r in results], fontsize=8
  )
  ax.set_ylim(0, 1)
  ax.set_title("SFT student on the synthetic task (held-out, greedy)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "results.png"), dpi=120)
  return table


def _main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  steps = 30 if _QUICK.value else _STEPS.value
  n_eval = 50 if _QUICK.value else _EVAL.value
  results = run(_WORKDIR.value, steps, _QUICK.value, n_eval)
  table = report(_WORKDIR.value, results)
  print(table)
  print(f"\nSaved {_WORKDIR.value}/results.md, results.json, results.png")


def main():
  try:
    app.run(_main)
  except (ValueError, FileNotFoundError, PermissionError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
