"""Time breakdown of one GRPO and one KDRL step (prints one JSON object).

  taskset -c 0 .venv/bin/python tests/bench/rl_step.py

Runs the real RL loop (``main.run_job``) on study-sized models: student
d128/L3, teacher d192/L4, char vocabulary, 8 prompts x G 8, <= 32 new
tokens, synthetic task. The first step (compilation) is dropped; the JSON
reports per-phase medians over the remaining steps, from the run's own
``time/*`` metrics: sampling, reward grading, scoring (student π_old plus
the reference / the fused teacher), the update, and the host share (the
part of the step spent outside jitted code: decoding, grading, shaping,
batch assembly, transfers). Target: host share <= 10%.
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)

import numpy as np  # noqa: E402

from w2s_jax import config_lib, main  # noqa: E402
from w2s_jax.training import metrics  # noqa: E402

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
PHASES = ("sample", "grade", "score", "update", "step", "host_share")


def _config(spec: str, args) -> config_lib.ml_collections.ConfigDict:
  c = config_lib.load(os.path.join(ROOT, spec))
  s, t = c.student.overrides, c.teacher.overrides
  s.d_model, s.num_layers, s.num_heads, s.num_kv_heads = 128, 3, 4, 2
  s.head_dim, s.mlp_dim = 32, 512
  t.d_model, t.num_layers, t.num_heads, t.num_kv_heads = 192, 4, 6, 2
  t.head_dim, t.mlp_dim = 32, 768
  c.train.steps = args.steps + 1
  c.train.save_every = 10_000
  c.train.log_every = 1
  c.train.tensorboard = False
  c.train.export = False
  c.rl.prompts_per_step = 8
  c.rl.group_size = 8
  c.rl.max_new_tokens = 32
  c.data.num_examples = 256
  return c


def run(spec: str, args) -> dict:
  with tempfile.TemporaryDirectory() as wd:
    main.run_job(_config(spec, args), wd)
    rows = metrics.read_metrics(wd)[1:]  # drop the compiling step
  out = {
      f"{p}_s"
      if p != "host_share"
      else p: float(np.median([r[f"time/{p}"] for r in rows]))
      for p in PHASES
  }
  out["response_length"] = float(
      np.mean([r["rollout/response_length"] for r in rows])
  )
  out["steps_timed"] = len(rows)
  return out


def main_() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  result = {
      "bench": "rl_step",
      "student": "d128/L3",
      "teacher": "d192/L4",
      "prompts": 8,
      "group_size": 8,
      "max_new_tokens": 32,
      "grpo": run("configs/grpo.py", args),
      "kdrl": run("configs/kdrl.py", args),
  }
  print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
  main_()
