"""Grading completions of the synthetic task (STUDY rule 3).

``answer_of`` reads the final answer (the first answer marker wins),
``parse_steps`` the worked steps; ``grade`` checks the answer and
``step_accuracy`` scores the steps, locally or along the chain. Text before
the solution's opening is ignored, so prompt + completion grades like the
completion. ``synthetic`` re-exports these names.
"""

from __future__ import annotations

import re
from typing import Literal

from w2s_jax.data.synthetic_task import (
    _WORD_OPS,
    STYLES,
    Problem,
    Step,
    _apply,
    _style,
    solve,
)


def _split_body(text: str, style: str) -> tuple[str, str | None]:
  """(steps text, text after the answer marker or None).

  Text before the solution's opening (``A:``, or the ``c:...`` prompt of the
  latent style) is dropped, so prompt + completion grades like completion.
  """
  s = _style(style)
  opening = "c:" if style == "latent" else s.prefix
  if (i := text.find(opening)) >= 0:
    text = text[i + len(opening) :]
    if style == "latent":
      text = text[text.find(".") + 1 :] if "." in text else ""
  i = text.find(s.answer)
  return (text, None) if i < 0 else (text[:i], text[i + len(s.answer) :])


def answer_of(text: str, style: str) -> int | None:
  """The number after the first answer marker of ``style``, else None.

  The first marker wins: a model that runs past its answer (no EOS) does not
  get to revise it.
  """
  _, tail = _split_body(text, style)
  m = re.match(r"\d+", tail) if tail is not None else None
  return int(m[0]) if m else None


def parse_steps(text: str, style: str) -> list[Step | None]:
  """Parses the steps of a solution; unparseable steps are None."""
  body, _ = _split_body(text, style)
  if not body:
    return []
  s, steps = STYLES[style], []
  for chunk in body.split(s.sep):
    m = s.step_re.fullmatch(chunk)
    if m is None:
      steps.append(None)
      continue
    g = m.groupdict()
    op = _WORD_OPS[g["w"]] if g.get("w") else g.get("o")
    left, right = g.get("l"), g.get("r")
    steps.append(
        Step(
            None if left is None else int(left),
            op,
            None if right is None else int(right),
            int(g["c"]),
        )
    )
  return steps


def grade(problem: Problem, completion: str, style: str) -> bool:
  """Whether the completion's final answer is the problem's answer."""
  return answer_of(completion, style) == problem.answer


def step_accuracy(
    problem: Problem,
    completion: str,
    style: str,
    mode: Literal["local", "chain"] = "local",
) -> float:
  """Fraction of the problem's steps that the completion gets right.

  Args:
    problem: The problem.
    completion: A solution in ``style``.
    style: Its style.
    mode: ``local``: a step is right iff it copies its operands correctly (the
      previous step's *written* result and the problem's operand) and states
      the true fact, so an early slip costs one step, not all later ones.
      ``chain``: a step is right iff its result equals the true intermediate.

  Returns:
    Right steps / ``problem.num_steps``; missing steps count as wrong, extra
    steps are ignored.
  """
  if mode not in ("local", "chain"):
    raise ValueError(f"mode={mode!r}: choose 'local' or 'chain'.")
  gold, parsed = solve(problem), parse_steps(completion, style)
  m, right, prev = problem.modulus, 0, problem.start
  for i, g in enumerate(gold):
    t = parsed[i] if i < len(parsed) else None
    if t is not None:
      if mode == "chain":
        ok = t.result == g.result
      else:
        left = prev if t.left is None else t.left
        ok = (
            left == prev
            and t.op in (None, g.op)
            and t.right in (None, g.right)
            and t.result == _apply(g.op, left, g.right, m)
        )
      right += ok
    # An unreadable step hands on the true value, so it is charged once.
    prev = g.result if t is None else t.result
  return right / len(gold)
