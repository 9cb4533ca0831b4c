"""Job ``eval``: a model on the synthetic task, GSM8K or MATH-500.

Writes ``eval/items.jsonl`` and ``eval/summary.json`` (pass@k, maj@k,
length) under the workdir.
"""

from __future__ import annotations

import os
from typing import Any

from w2s_jax.data import formatting
from w2s_jax.evals import evaluate
from w2s_jax.jobs import common


def run_eval(config: Any, workdir: str) -> dict[str, float]:
  e = config.eval
  model, tok = common.model_and_tokenizer(
      config.model, config.data.tokenizer, workdir
  )
  problems = common.problems(e)
  summary, rows = evaluate.evaluate(
      model,
      tok,
      problems,
      task=common.task_name(str(e.dataset)),
      fmt=formatting.get_format(str(config.data.prompt_format)),
      style=str(e.get("style", "terse")),
      n=int(e.n),
      temperature=float(e.temperature),
      top_p=float(e.top_p),
      max_new_tokens=int(e.max_new_tokens),
      batch_size=int(e.batch_size),
      seed=int(config.seed),
  )
  evaluate.write_results(os.path.join(workdir, "eval"), summary, rows)
  print(summary)
  return summary
