r"""Semantic soft bootstrapping data: selection, hinted prompts, row alignment.

SSB (docs/methods.md, "SSB", arXiv 2512.05105) turns the frozen base model into its own
teacher by showing it hints. Per problem:

1. K rollouts of the base model are graded (``select_hints`` gets them);
2. problems with at least one right and one wrong rollout are kept; the hint
   pair is one correct rollout and one rollout carrying the most frequent
   wrong answer (a seeded random pick among the tied answers, so "random if
   all distinct");
3. ``hinted_prompt`` shows the question with both rollouts and asks for a
   standalone solution; the base model answers it (T 0.4) and the reply is
   kept if still correct;
4. the teacher's top-k rows on ``hinted prompt || reply`` are moved onto
   the student's ``question || reply`` rows by ``align_teacher_rows``, so
   teacher row i and student row i both predict reply token i.

The student never sees the hints: only the teacher's soft distribution over
the reply carries them. Pure Python / numpy; ``jobs.ssb_data.run_ssb_data`` drives
the models.

Shape legend: L length, K cached top-k entries.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

HINT_STYLES = ("text", "raw")

# The chat-style hint (jsonl problems: GSM8K, MATH). Labelled hints, and an
# instruction to write a solution that stands on its own.
TEXT_HINT = (
    "{question}\n\n"
    "Below are two attempts at this problem. The first is correct; the"
    " second reaches a common wrong answer.\n\n"
    "Correct attempt:\n{correct}\n\n"
    "Incorrect attempt:\n{wrong}\n\n"
    "Write your own complete step-by-step solution to the problem. It must"
    " stand on its own: do not mention, quote or compare the attempts above."
    " Put the final answer in \\boxed{{}}."
)
# The synthetic task's raw form of the same idea, in its char alphabet:
# "use <correct> not <wrong>" before the question.
RAW_HINT = "use {correct} not {wrong} {question}"


@dataclasses.dataclass(frozen=True)
class Rollout:
  """One graded base-model rollout.

  Attributes:
    text: the completion text.
    answer: the extracted answer (None if none was found).
    correct: graded correct.
  """

  text: str
  answer: str | None
  correct: bool


@dataclasses.dataclass(frozen=True)
class HintPair:
  """The rollouts shown to the teacher for one problem.

  Attributes:
    correct: a correct rollout (the first one).
    wrong: a rollout with the majority wrong answer (the first one).
    wrong_answer: that answer (None when no wrong rollout had one).
    num_correct: correct rollouts among the K.
  """

  correct: Rollout
  wrong: Rollout
  wrong_answer: str | None
  num_correct: int


def select_hints(
    rollouts: Sequence[Rollout], rng: np.random.Generator
) -> HintPair | None:
  """SSB's selection rule for one problem (docs/methods.md, "SSB" step 2).

  Args:
    rollouts: the K graded rollouts of one problem.
    rng: breaks ties between equally frequent wrong answers.

  Returns:
    None unless there is at least one correct and one wrong rollout; else
    the first correct rollout and the first rollout with the most frequent
    wrong answer (ties, e.g. all distinct: a random one of the tied
    answers). Wrong rollouts without an answer count only when no wrong
    rollout has one.
  """
  right = [r for r in rollouts if r.correct]
  wrong = [r for r in rollouts if not r.correct]
  if not right or not wrong:
    return None
  counts = collections.Counter(r.answer for r in wrong if r.answer is not None)
  if counts:
    top = max(counts.values())
    # Candidates in order of first appearance: the draw depends on rng only.
    tied = [a for a in counts if counts[a] == top]
    answer = tied[int(rng.integers(len(tied)))] if len(tied) > 1 else tied[0]
    pick = next(r for r in wrong if r.answer == answer)
  else:
    answer, pick = None, wrong[int(rng.integers(len(wrong)))]
  return HintPair(right[0], pick, answer, len(right))


def hinted_prompt(question: str, pair: HintPair, style: str = "text") -> str:
  """The teacher's prompt: question + one correct + one majority-wrong.

  Args:
    question: the problem text.
    pair: from ``select_hints``.
    style: 'text' (an instruction; for chat models) or 'raw' (the synthetic
      task's char format).
  """
  if style not in HINT_STYLES:
    raise ValueError(
        f"ssb.hint_style must be one of {HINT_STYLES}, got {style!r}."
    )
  template = TEXT_HINT if style == "text" else RAW_HINT
  return template.format(
      question=question,
      correct=pair.correct.text.strip(),
      wrong=pair.wrong.text.strip(),
  )


def student_prompt(question: str, system: str = "") -> str:
  """``system + " " + question`` as the official code tokenizes it."""
  return f"{system} {question}" if system else question


def align_teacher_rows(
    teacher_ids_LK: np.ndarray,
    teacher_logprobs_LK: np.ndarray,
    teacher_prompt_len: int,
    student_prompt_len: int,
    reply_len: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Teacher rows on ``hinted || reply`` placed on ``question || reply``.

  Row t of either sequence predicts token t + 1, so reply token i is
  predicted by teacher row ``p_h − 1 + i`` and by student row
  ``p_s − 1 + i`` (the rows ``[p − 1, p + r − 1)`` of docs/methods.md, "SSB"). Student
  rows outside the reply carry padding entries (ids 0..K-1, log-prob −inf)
  that the loss never reads (they are off the completion mask).

  Args:
    teacher_ids_LK: [p_h + r, K] teacher top-k ids.
    teacher_logprobs_LK: [p_h + r, K] their log-probs.
    teacher_prompt_len: p_h, tokens of the hinted prompt (>= 1).
    student_prompt_len: p_s, tokens of the student prompt (>= 1).
    reply_len: r, reply tokens (EOS included).

  Returns:
    ``(ids, logprobs)`` of shape [p_s + r, K].
  """
  p_h, p_s, r = int(teacher_prompt_len), int(student_prompt_len), int(reply_len)
  n_t, k = np.shape(teacher_ids_LK)
  if p_h < 1 or p_s < 1 or r < 1:
    raise ValueError(
        f"prompt lengths ({p_h}, {p_s}) and reply length {r} must be >= 1:"
        " the first reply token needs a prompt row to predict it."
    )
  if n_t != p_h + r:
    raise ValueError(
        f"teacher rows {n_t} != hinted prompt {p_h} + reply {r}; score the"
        " hinted prompt followed by exactly the reply tokens."
    )
  ids = np.broadcast_to(np.arange(k, dtype=np.int32), (p_s + r, k)).copy()
  lps = np.full((p_s + r, k), -np.inf, np.float32)
  ids[p_s - 1 : p_s + r - 1] = teacher_ids_LK[p_h - 1 : p_h + r - 1]
  lps[p_s - 1 : p_s + r - 1] = teacher_logprobs_LK[p_h - 1 : p_h + r - 1]
  return ids, lps
