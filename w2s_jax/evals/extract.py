"""Final-answer extraction from completions and reference solutions.

Implements docs/methods.md, "Grading" A completion's answer is found by the first rule that
fires, and the rule is reported so that graders can log how often each one is
responsible for a score:

* ``boxed``: the last ``\\boxed`` (or ``\\fbox``) command. From its opening
  ``{`` the brace depth is counted to the matching ``}``, so nested braces
  (``\\boxed{\\frac{1}{\\sqrt{2}}}``) survive; the brace-less ``\\boxed 5``
  form is accepted too. The last box is authoritative: when it is unbalanced
  (a truncated generation) or empty, the answer is None rather than an
  earlier box or a stray number, which would credit an abandoned guess.
* ``hash``: text after the last ``####`` (GSM8K style), up to the end of that
  line, minus ``,`` and ``$``.
* ``last_number``: the last number in the text (GSM8K only).
* ``none``: nothing extractable.

GSM8K completions try all three rules in that order; MATH completions use the
box only, as in the MATH reference grader.

Number pattern. The grading rule (docs/methods.md, "Grading") gives ``-?\\d[\\d,]*(\\.\\d+)?``; that reads the pair
``1,2`` as twelve. Here a comma only joins proper thousands groups
(``1,234,567``), otherwise the comma separates two numbers.

All functions are pure string processing with no third-party imports; they
are safe to call in-process on untrusted model output (linear time, no
backtracking-prone patterns).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

Task = Literal["gsm8k", "math"]

RULE_BOXED = "boxed"
RULE_HASH = "hash"
RULE_LAST_NUMBER = "last_number"
RULE_NONE = "none"
RULES = (RULE_BOXED, RULE_HASH, RULE_LAST_NUMBER, RULE_NONE)

TASKS = ("gsm8k", "math")

# A box command not followed by a letter, so that e.g. ``\boxedfoo`` (another
# macro) does not count.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# A thousands-grouped number, or a plain run of digits; optional sign and
# decimal part. The lookahead stops ``1,2345`` from reading as ``1,234``.
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?")
_THINK_CLOSE = "</think>"


@dataclasses.dataclass(frozen=True)
class Extraction:
  """An extracted answer and the rule that produced it.

  Attributes:
    answer: The answer string, stripped; None when the rule that fired found
      a malformed answer (unbalanced or empty box) or no rule fired.
    rule: One of ``RULES``.
  """

  answer: str | None
  rule: str


def _check_text(text: object, name: str) -> str:
  if not isinstance(text, str):
    raise TypeError(
        f"{name} must be a str, got {type(text).__name__}; decode token ids to"
        " text before extracting an answer."
    )
  return text


def _match_braces(text: str, open_idx: int) -> int | None:
  """Index of the ``}`` matching the ``{`` at ``open_idx``; None if none."""
  depth = 0
  i = open_idx
  n = len(text)
  while i < n:
    ch = text[i]
    if ch == "\\":
      # A backslash escapes the next character: ``\{``/``\}`` are literal set
      # braces and ``\\`` a line break, neither of which opens a group.
      i += 2
      continue
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
      if depth == 0:
        return i
    i += 1
  return None


def extract_boxed(text: str) -> str | None:
  """Content of the last ``\\boxed``/``\\fbox`` in ``text``.

  Args:
    text: A completion or solution.

  Returns:
    The stripped content of the last box, with nested braces kept; None when
    there is no box, the last box is unbalanced, or it is empty.
  """
  text = _check_text(text, "text")
  matches = list(_BOX_RE.finditer(text))
  if not matches:
    return None
  end = matches[-1].end()
  rest = text[end:]
  stripped = rest.lstrip()
  if stripped.startswith("{"):
    open_idx = end + (len(rest) - len(stripped))
    close_idx = _match_braces(text, open_idx)
    if close_idx is None:
      return None
    content = text[open_idx + 1 : close_idx].strip()
    return content or None
  if rest[:1].isspace():
    # ``\boxed 5``: the argument is the next token, ended by whitespace or
    # the closing ``$`` of inline math.
    token = re.match(r"[^\s$]+", stripped)
    if token is None:
      return None
    return token.group(0).rstrip(".,") or None
  return None


def extract_hash(text: str) -> str | None:
  """Text after the last ``####`` up to the end of its line, minus ``,``/``$``.

  Args:
    text: A completion or a GSM8K reference solution.

  Returns:
    The cleaned answer string; None when there is no ``####`` or nothing
    follows it on that line.
  """
  text = _check_text(text, "text")
  idx = text.rfind("####")
  if idx < 0:
    return None
  line = text[idx + 4 :].split("\n", 1)[0]
  answer = line.replace(",", "").replace("$", "").strip()
  return answer or None


def extract_last_number(text: str) -> str | None:
  """The last number in ``text``, with thousands separators removed.

  Args:
    text: Any text; a unicode minus sign counts as ``-``.

  Returns:
    The number as a string (e.g. ``"-1234.5"``); None if there is none.
  """
  text = _check_text(text, "text").replace("\u2212", "-")
  numbers = _NUMBER_RE.findall(text)
  if not numbers:
    return None
  return numbers[-1].replace(",", "")


def strip_think(text: str) -> str:
  """The part of ``text`` after the last ``</think>``; all of it if none.

  Reasoning models put their final answer after the thinking block; graders
  that must ignore boxes inside the reasoning call this first.
  """
  text = _check_text(text, "text")
  return text.rsplit(_THINK_CLOSE, 1)[-1]


def extract_answer(completion: str, task: Task = "gsm8k") -> Extraction:
  """Extracts a model's final answer and reports the rule that fired.

  Args:
    completion: Model output text.
    task: ``"gsm8k"`` (box, then ``####``, then last number) or ``"math"``
      (box only).

  Returns:
    An :class:`Extraction`.

  Raises:
    ValueError: Unknown ``task``.
    TypeError: ``completion`` is not a string.
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
  completion = _check_text(completion, "completion")
  if _BOX_RE.search(completion):
    return Extraction(extract_boxed(completion), RULE_BOXED)
  if task == "math":
    return Extraction(None, RULE_NONE)
  if "####" in completion:
    return Extraction(extract_hash(completion), RULE_HASH)
  number = extract_last_number(completion)
  if number is not None:
    return Extraction(number, RULE_LAST_NUMBER)
  return Extraction(None, RULE_NONE)


def gsm8k_gold(solution: str) -> str:
  """The gold answer of a GSM8K reference solution (after the last ``####``).

  Args:
    solution: The dataset's ``answer`` field, ending in ``#### <number>``.

  Returns:
    The answer with ``,`` and ``$`` removed, e.g. ``"70000"``.

  Raises:
    ValueError: There is no ``####`` line or it is empty.
  """
  solution = _check_text(solution, "solution")
  answer = extract_hash(solution)
  if answer is None:
    raise ValueError(
        "GSM8K solution has no '#### <answer>' line; the reference solution"
        f" must end with one (got ...{solution[-60:]!r})."
    )
  return answer


def math_gold(answer: str | None, solution: str | None) -> str:
  """The gold answer of a MATH problem: ``answer``, else the solution's box.

  Args:
    answer: The dataset's short answer field (MATH-500 has one), or None.
    solution: The reference solution, used when ``answer`` is missing/empty.

  Returns:
    The gold answer string, stripped.

  Raises:
    ValueError: Neither a non-empty ``answer`` nor a box in ``solution``.
  """
  if isinstance(answer, str) and answer.strip():
    return answer.strip()
  if isinstance(solution, str):
    boxed = extract_boxed(solution)
    if boxed is not None:
      return boxed
  raise ValueError(
      "MATH problem has no gold answer: the 'answer' field is missing or empty"
      " and the solution has no balanced \\boxed{...}; add one of them."
  )
