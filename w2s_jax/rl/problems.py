"""RL prompts: ``Problem``, the resumable ``PromptSource`` and
``build_problems`` (config -> problems with gold answers and stored
solutions).

No JAX at import time (``training.inputs``, which imports it, is imported
only inside ``build_problems``), so hosts and tools that only need the
prompts stay light.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from w2s_jax.data import synthetic


@dataclasses.dataclass(frozen=True)
class Problem:
  """One prompt of the RL task.

  Attributes:
    prompt_ids: prompt token ids.
    gold: what the grader receives with each completion.
    answer_text: the gold answer as text (AMPO comprehension score).
    solutions: EOS-terminated completion ids of stored solutions (GKD data,
      AMPO teachers).
    solution_texts: their texts.
  """

  prompt_ids: np.ndarray
  gold: Any = None
  answer_text: str = ""
  solutions: tuple[np.ndarray, ...] = ()
  solution_texts: tuple[str, ...] = ()


class PromptSource:
  """Deterministic, resumable prompts: a permutation per epoch.

  The state is (epoch, position); a restored source continues exactly.
  """

  def __init__(self, problems: Sequence[Problem], seed: int):
    if not problems:
      raise ValueError("the RL task has no prompts; check data.* settings.")
    self.problems, self.seed = list(problems), int(seed)
    self.epoch, self.pos = 0, 0

  def get_state(self) -> dict[str, int]:
    """The checkpointable position, ``{'epoch', 'pos'}``."""
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state: dict[str, int]) -> None:
    """Continues from a ``get_state`` result."""
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

  def take(self, n: int) -> list[Problem]:
    """The next ``n`` problems, crossing into the next epoch as needed."""
    out = []
    while len(out) < n:
      if self.pos >= len(self.problems):
        self.epoch, self.pos = self.epoch + 1, 0
      order = np.random.default_rng([self.seed, self.epoch]).permutation(
          len(self.problems)
      )
      k = min(n - len(out), len(self.problems) - self.pos)
      out += [self.problems[i] for i in order[self.pos : self.pos + k]]
      self.pos += k
    return out


def _read_jsonl_problems(path: str) -> list[dict[str, Any]]:
  rows = []
  try:
    f = open(path, encoding="utf-8")  # noqa: SIM115
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"data.path={path!r} not found; pass a JSONL file of"
        " {question, answer[, solutions]} rows."
    ) from e
  with f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not JSON ({e.msg}).") from e
      q = row.get("question", row.get("prompt"))
      if not isinstance(q, str) or "answer" not in row:
        raise ValueError(
            f"{path}:{i}: an RL problem needs a 'question' (or 'prompt')"
            " string and an 'answer'."
        )
      rows.append(row)
  return rows


def build_problems(method: str, data: Any, rl: Any, tokenizer) -> list[Problem]:
  """The RL prompts (and stored solutions) of a config.

  Methods with 'mixed' rollouts (GKD): ``inputs.sft_examples`` (synthetic
  gold traces in ``data.style`` or a jsonl traces file), the completion
  being the off-policy data. Policy methods: synthetic problems (solutions = gold traces in ``data.style`` and
  ``rl.ampo_styles``, AMPO's teachers), or ``data.source='jsonl'`` problems
  ``{question, answer[, solution | solutions]}`` graded by ``rl.task``.
  """
  # Imported here: ``inputs`` imports JAX, which this module must not.
  from w2s_jax import methods  # noqa: PLC0415
  from w2s_jax.data import formatting  # noqa: PLC0415
  from w2s_jax.training import inputs  # noqa: PLC0415

  fmt = formatting.get_format(str(data.get("prompt_format", "raw")))
  if methods.get(method, job="rl").rollouts == "mixed":
    return [
        Problem(
            prompt_ids=np.asarray(ex["prompt_ids"], np.int32),
            solutions=(np.asarray(ex["completion_ids"], np.int32),),
            solution_texts=("",),
        )
        for ex in inputs.sft_examples(data, tokenizer)
    ]
  out = []

  def solutions(question, texts):
    ids = tuple(
        np.asarray(
            formatting.build_example(tokenizer, question, s, fmt)[
                "completion_ids"
            ],
            np.int32,
        )
        for s in texts
    )
    return ids, tuple(texts)

  if data.source == "synthetic":
    task = inputs.task_config(data)
    style = str(data.get("style", "terse"))
    extra = [s for s in str(rl.get("ampo_styles", "")).split(",") if s]
    styles = [style] + [s for s in extra if s != style]
    problems = synthetic.sample_problems(
        task,
        str(data.get("split", "train")),
        int(data.num_examples),
        seed=int(data.get("seed", 0)),
    )
    for p in problems:
      question = synthetic.prompt(p, style)
      ids, texts = solutions(
          question, [synthetic.gold_trace(p, s) for s in styles]
      )
      out.append(
          Problem(
              prompt_ids=formatting.encode_prompt(tokenizer, question, fmt),
              gold=p.spec,
              answer_text=str(p.answer),
              solutions=ids,
              solution_texts=texts,
          )
      )
  elif data.source == "jsonl":
    for row in _read_jsonl_problems(str(data.path)):
      question = row.get("question", row.get("prompt"))
      sols = row.get("solutions") or (
          [row["solution"]] if row.get("solution") else []
      )
      ids, texts = solutions(question, [str(s) for s in sols])
      out.append(
          Problem(
              prompt_ids=formatting.encode_prompt(tokenizer, question, fmt),
              gold=str(row["answer"]),
              answer_text=str(row["answer"]),
              solutions=ids,
              solution_texts=texts,
          )
      )
  else:
    raise ValueError(
        f"data.source={data.source!r} cannot feed an RL run; use 'synthetic'"
        " or 'jsonl' (problems with answers)."
    )
  return out
