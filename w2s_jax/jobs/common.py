"""What the sampling and evaluation jobs share: problems, task names, models.

Shape legend: none (host-side orchestration).
"""

from __future__ import annotations

from typing import Any

from w2s_jax.evals import datasets, evaluate
from w2s_jax.training import inputs, trainer


def problems(cfg: Any) -> list[dict[str, Any]]:
  """Evaluation/sampling problems from ``cfg.dataset``."""
  name, n = str(cfg.dataset), int(cfg.get("num_problems", 0))
  if name == "synthetic":
    task = inputs.task_config(cfg)
    split = str(cfg.get("split", "test"))
    return evaluate.synthetic_problems(
        task, n or 200, split=split, seed=int(cfg.get("seed", 0))
    )
  if name == "gsm8k":
    recs = datasets.load_gsm8k(
        str(cfg.get("split", "test")), cfg.get("path") or None
    )
  elif name == "math500":
    recs = datasets.load_math500(cfg.get("path") or None)
  else:
    raise ValueError(
        f"dataset {name!r} is not one of 'synthetic', 'gsm8k', 'math500'."
    )
  rows = list(recs)
  return rows[:n] if n else rows


def task_name(dataset: str) -> str:
  return {"synthetic": "synthetic", "gsm8k": "gsm8k", "math500": "math"}[
      dataset
  ]


def model_and_tokenizer(mcfg: Any, tokenizer_spec: str, workdir: str):
  tokenizer = inputs.load_tokenizer(tokenizer_spec, workdir)
  return trainer.build_model(mcfg, tokenizer), tokenizer
