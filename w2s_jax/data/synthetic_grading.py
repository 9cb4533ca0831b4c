"""Grading completions of the synthetic task (STUDY rule 3).

``answer_of`` reads the final answer (the first answer marker wins),
``parse_steps`` the worked steps; ``grade`` checks the answer and
``step_accuracy`` scores the steps, locally or along the chain. Text before
the solution's opening is ignored, so prompt + completion grades like the
completion. ``synthetic`` re-exports these names.

Skill and format are graded apart: ``grade(..., notation="any")`` (and
``answer_any``) accept a final answer written in any notation of
``STYLES`` (a strong student answering a terse prompt in its own latent
notation, ``9*0=0,0+0=0 a0``, is right), while ``format_ok`` says whether a
completion is exactly the asked style's format. ``correct_any`` is the
any-notation grader as an RL reward function (``rl.reward_fn``).
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


# The distinct answer markers of STYLES, and the prompt ends they follow.
ANSWER_MARKERS = tuple(dict.fromkeys(s.answer for s in STYLES.values()))
NOTATIONS = ("strict", "any")


def _any_body(text: str) -> str:
  """``text`` after its prompt (``Q:...?`` or ``c:....``), if it has one."""
  for opening, end in (("Q:", "?"), ("c:", ".")):
    if (i := text.find(opening)) >= 0 and (j := text.find(end, i)) >= 0:
      text = text[j + 1 :]
      break
  return text


def answer_any(text: str) -> int | None:
  """The number after the earliest answer marker of any style, else None.

  The notation is read off the completion, not asked: ``A:9*0=0;0+0=0#0``,
  ``9*0=0,0+0=0 a0`` and ``A:9 times 0 is 0, 0 plus 0 is 0, so 0`` all
  answer 0. As in ``answer_of``, the first marker wins.
  """
  body = _any_body(text)
  hits = [(i, m) for m in ANSWER_MARKERS if (i := body.find(m)) >= 0]
  if not hits:
    return None
  i, marker = min(hits)
  m = re.match(r"\d+", body[i + len(marker) :])
  return int(m[0]) if m else None


def format_ok(text: str, style: str, num_steps: int | None = None) -> bool:
  """Whether ``text`` is a solution in exactly ``style``'s format.

  The solution's opening, steps that each parse, the answer marker, the
  answer and nothing after it (a completion that runs on is out of format);
  with ``num_steps``, also exactly that many steps.
  """
  s = _style(style)
  body = _any_body(text) if style == "latent" else text
  if style != "latent":
    if (i := body.find(s.prefix)) < 0:
      return False
    body = body[i + len(s.prefix) :]
  steps_text, marker, tail = body.partition(s.answer)
  if not marker or not re.fullmatch(r"\d+", tail):
    return False
  chunks = steps_text.split(s.sep)
  if num_steps is not None and len(chunks) != num_steps:
    return False
  return all(s.step_re.fullmatch(c) for c in chunks)


def grade(
    problem: Problem, completion: str, style: str, notation: str = "strict"
) -> bool:
  """Whether the completion's final answer is the problem's answer.

  Args:
    problem: The problem.
    completion: The completion (a prompt in front is ignored).
    style: The asked style (its answer marker, for ``notation="strict"``).
    notation: ``strict``: only ``style``'s answer marker counts; ``any``:
      an answer in any style's notation counts (``answer_any``).
  """
  if notation not in NOTATIONS:
    raise ValueError(f"notation={notation!r}: choose one of {NOTATIONS}.")
  if notation == "any":
    return answer_any(completion) == problem.answer
  return answer_of(completion, style) == problem.answer


def correct_any(completion: str, spec: str) -> float:
  """RL reward: 1.0 iff the answer, in any notation, is ``spec``'s answer.

  Usable as ``rl.reward='fn', rl.reward_fn=
  'w2s_jax.data.synthetic_grading:correct_any'`` (the gold of a synthetic
  RL problem is its spec).
  """
  return float(grade(Problem.from_spec(spec), completion, "terse", "any"))


def best_step_accuracy(
    problem: Problem, completion: str, styles: tuple[str, ...] = tuple(STYLES)
) -> float:
  """``step_accuracy`` in the best-fitting of ``styles`` (any notation)."""
  return max(step_accuracy(problem, completion, s) for s in styles)


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
