"""Answer equivalence: string normalisation, then Math-Verify in workers.

docs/methods.md, "Grading" Two stages:

1. **In-process fast path** (:func:`normalize`, :func:`strings_equal`): the
   normalisation rules of the MATH grader family (drop spaces, ``\\left``/
   ``\\right``, ``\\!``, ``$``, trailing ``\\text{...}`` units, ``^\\circ``,
   ``\\%``, a trailing ``.``; ``\\dfrac`` -> ``\\frac``; ``\\frac12`` ->
   ``\\frac{1}{2}``; ``.5`` -> ``0.5``; thousands separators; a short
   ``x =`` prefix), then string equality, then exact rational comparison when
   both sides are plain numbers (``\\frac{1}{2}``, ``1/2``, ``0.5``). It only
   ever answers "equal"; a mismatch is not proof of inequality.
2. **Math-Verify in a worker process** (:class:`Verifier`) for what the fast
   path cannot settle. SymPy on adversarial input (``9^{9^{9^{9}}}``) can run
   for ever inside C code that no signal interrupts, so each item runs in a
   separate process with a hard per-item deadline: a worker that overruns is
   killed (SIGKILL) and replaced, and the item counts as *not equal*. A crash
   (segfault, MemoryError under the per-worker address-space limit) is also
   *not equal*; nothing propagates to the caller.

The process machinery lives in :mod:`w2s_jax.evals.worker_pool` (spawn or
forkserver workers, never fork, since the parent usually has JAX threads
running; workers never import JAX). A script that creates a :class:`Verifier`
must guard its entry point with ``if __name__ == "__main__":``.

Answers are compared as the MATH graders do: units, degrees and percent signs
are dropped (``50\\%`` equals ``50``), and ``x = 5`` equals ``5``.
"""

from __future__ import annotations

import atexit
import dataclasses
import fractions
import re
import threading
from typing import Sequence

from w2s_jax.evals import worker_pool

# ---------------------------------------------------------------------------
# Stage 1: normalisation.
# ---------------------------------------------------------------------------

# Unit text after a quantity: ``5\text{ cm}``, ``3 \mbox{ inches}^2``.
_UNIT_TEXT = r"\\(?:text|textrm|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}"
_TEXT_UNIT_RE = re.compile(
    r"^(?P<head>.*?\S)\s*" + _UNIT_TEXT + r"(?:\^\{?[23]\}?)?$"
)
# Plain unit words after a bare number: ``18 dollars``, ``5 square feet``.
_WORD_UNIT_RE = re.compile(
    r"^(?P<head>-?[\d.,]*\d)\s+(?P<words>[A-Za-z][A-Za-z ]*)$"
)
# Words that are mathematics, not units, after a number (``2 pi``).
_NOT_UNITS = frozenset({"pi", "e", "i", "or", "and"})
_TEXT_WRAP_RE = re.compile(
    r"\\(?:text|textrm|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}"
)
_SIZING_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])"
)
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\degree|°")
_PREFIX_RE = re.compile(
    r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?=(?P<rhs>.+)$"
)
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL_RE = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH_RE = re.compile(r"^(-?\d+)/(-?\d+)$")


# Longer inputs are not final answers; skip them rather than spend time.
_MAX_FAST_CHARS = 10_000


def normalize(answer: str) -> str:
  """Canonical string form of a final answer (docs/methods.md, "Grading" rules).

  Args:
    answer: An extracted answer such as ``"\\dfrac{1}{2}"`` or ``"x = 5"``.

  Returns:
    The normalised string; equal strings mean equal answers.
  """
  if not isinstance(answer, str):
    raise TypeError(f"answer must be a str, got {type(answer).__name__}.")
  s = answer.replace("\u2212", "-").replace("\n", " ").strip()
  s = s.replace("\\$", "").replace("$", "")
  s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
  s = _SIZING_RE.sub("", s)
  s = s.replace("\\displaystyle", "")
  for thin_space in ("\\!", "\\,", "\\;", "\\:"):
    s = s.replace(thin_space, "")
  s = s.replace("\\ ", " ").replace("~", " ")
  s = _DEGREE_RE.sub("", s)
  s = s.replace("\\%", "").replace("%", "")
  s = s.replace("{,}", "")  # LaTeX thousands separator 1{,}000.
  s = s.strip().rstrip(".").rstrip()
  # Units go before spaces are dropped: the leading space of ``\text{ cm}``
  # and the space in ``18 dollars`` are what tell a unit from a name.
  unit = _TEXT_UNIT_RE.match(s)
  if unit is not None:
    s = unit.group("head")
  word_unit = _WORD_UNIT_RE.match(s)
  if word_unit is not None and not (
      set(word_unit.group("words").lower().split()) & _NOT_UNITS
  ):
    s = word_unit.group("head")
  # Unwrap what is left of \text{...} (names, multiple-choice letters).
  for _ in range(4):  # Real answers nest \text at most a level or two.
    s, count = _TEXT_WRAP_RE.subn(r"\1", s)
    if not count:
      break
  s = re.sub(r"\s+", "", s)
  s = s.rstrip(".")
  # Shorthand TeX arguments: \frac12, \frac1{2}, \frac{1}2, \sqrt2.
  s = re.sub(r"\\frac([^{\\])([^{\\])", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac([^{\\])\{", r"\\frac{\1}{", s)
  s = re.sub(r"\\frac(\{[^{}]*\})([^{\\])", r"\\frac\1{\2}", s)
  s = re.sub(r"\\sqrt([^{\\\[])", r"\\sqrt{\1}", s)
  s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
  prefix = _PREFIX_RE.match(s)
  if prefix is not None and "=" not in prefix.group("rhs"):
    s = prefix.group("rhs")
  if _THOUSANDS_RE.match(s):
    s = s.replace(",", "")
  if _DECIMAL_RE.match(s) and len(s) <= 64:
    s = _canonical_decimal(s)
  slash = _SLASH_RE.match(s)
  if slash is not None:
    s = f"\\frac{{{slash.group(1)}}}{{{slash.group(2)}}}"
  return s


def _canonical_decimal(s: str) -> str:
  """``"05.50"`` -> ``"5.5"``, ``"-0"`` -> ``"0"``, ``"3."`` -> ``"3"``."""
  value = fractions.Fraction(s.rstrip(".") if s.endswith(".") else s)
  if value.denominator == 1:
    return str(value.numerator)
  text = s.lstrip("-").rstrip("0")
  int_part, _, frac_part = text.partition(".")
  int_part = int_part.lstrip("0") or "0"
  sign = "-" if value < 0 else ""
  return f"{sign}{int_part}.{frac_part}"


def as_rational(normalized: str) -> fractions.Fraction | None:
  """Exact value of a normalised plain number; None for anything else."""
  if len(normalized) > 64:
    return None
  try:
    if _DECIMAL_RE.match(normalized):
      return fractions.Fraction(normalized)
    frac = _FRAC_RE.match(normalized)
    if frac is not None:
      sign = -1 if frac.group(1) else 1
      return sign * fractions.Fraction(int(frac.group(2)), int(frac.group(3)))
  except (ValueError, ZeroDivisionError):
    return None
  return None


def strings_equal(pred: str, gold: str) -> bool:
  """True when the normalised answers match exactly (fast path).

  Args:
    pred: Predicted answer.
    gold: Gold answer.

  Returns:
    True if the normalised strings are equal or both are the same exact
    rational number. False means "not shown equal here", not "unequal";
    inputs over 10,000 characters are never equal.
  """
  if len(pred) > _MAX_FAST_CHARS or len(gold) > _MAX_FAST_CHARS:
    return False
  a, b = normalize(pred), normalize(gold)
  if not a or not b:
    return False
  if a == b:
    return True
  ra, rb = as_rational(a), as_rational(b)
  return ra is not None and ra == rb


# ---------------------------------------------------------------------------
# Math-Verify on top of the pool.
# ---------------------------------------------------------------------------

_MV_CONFIG = None


def _math_verify_config():
  global _MV_CONFIG
  if _MV_CONFIG is None:
    import logging

    import math_verify

    # Deadlines are enforced by the parent (SIGKILL); the in-library SIGALRM
    # timeouts are off, and with them its per-call warnings.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _MV_CONFIG = (
        math_verify,
        [
            math_verify.LatexExtractionConfig(boxed_match_priority=0),
            math_verify.ExprExtractionConfig(),
        ],
    )
  return _MV_CONFIG


def math_verify_equal(pred: str, gold: str) -> bool:
  """Math-Verify's verdict on two extracted answers. Runs in a worker.

  Both strings are wrapped in ``\\boxed{}`` so that Math-Verify parses the
  whole answer as one LaTeX expression; gold goes first (the library is not
  symmetric).
  """
  mv, config = _math_verify_config()
  gold_parsed = mv.parse(
      "\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None
  )
  pred_parsed = mv.parse(
      "\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None
  )
  if not gold_parsed or not pred_parsed:
    return False
  return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _warm_up_math_verify() -> None:
  """First calls build parser tables and SymPy caches: do them at startup."""
  math_verify_equal("(x+1)^2", "x^2+2x+1")
  math_verify_equal(r"\left[1, \frac{\sqrt{2}}{2}\right)", r"\{1, 2\}")
  latex_parses(r"\text{(A)}")


def latex_parses(answer: str) -> bool:
  """True if ``answer`` parses to a SymPy object via Math-Verify's LaTeX path.

  Runs in a worker (parsing builds SymPy objects, which can be slow).
  """
  mv, _ = _math_verify_config()
  parsed = mv.parse(
      "\\boxed{" + answer + "}",
      extraction_config=[mv.LatexExtractionConfig(boxed_match_priority=0)],
      fallback_mode="no_fallback",
      parsing_timeout=None,
  )
  return bool(parsed)


@dataclasses.dataclass(frozen=True)
class Verdict:
  """Whether a predicted answer equals the gold one, and how that was decided.

  Attributes:
    equal: The grade.
    status: ``"string"`` (fast path), ``"math_verify"`` (equal per
      Math-Verify), ``"unequal"``, ``"no_answer"`` (prediction is None or
      empty), ``"too_long"``, or a worker failure: ``"timeout"``,
      ``"crash"``, ``"error"``. Failures are never equal.
  """

  equal: bool
  status: str


class Verifier:
  """Grades answer pairs: fast path in-process, Math-Verify in workers.

  Example::

    with Verifier(num_workers=4, timeout_s=5.0) as verifier:
      verdicts = verifier.verify_many([("1/2", "0.5"), ("x=5", "6")])
  """

  def __init__(
      self,
      num_workers: int = 2,
      *,
      timeout_s: float = 5.0,
      max_chars: int = 1000,
      use_math_verify: bool = True,
      start_method: str = "spawn",
      memory_limit_mb: int | None = 4096,
  ):
    """Creates the verifier and, with ``use_math_verify``, its workers.

    Args:
      num_workers: Worker processes grading in parallel.
      timeout_s: Hard deadline per pair in seconds.
      max_chars: Longer answers are graded unequal without parsing; no real
        final answer is that long and parse time grows with length.
      use_math_verify: False grades with the fast path only (no processes).
      start_method: ``"spawn"`` or ``"forkserver"``.
      memory_limit_mb: Per-worker address-space limit.
    """
    if max_chars < 1:
      raise ValueError(f"max_chars must be >= 1, got {max_chars}.")
    self.max_chars = max_chars
    self.timeout_s = float(timeout_s)
    self.pool = None
    if use_math_verify:
      self.pool = worker_pool.WorkerPool(
          num_workers,
          timeout_s=timeout_s,
          start_method=start_method,
          preload=("math_verify",),
          warmup=_warm_up_math_verify,
          memory_limit_mb=memory_limit_mb,
      )

  def verify_many(
      self,
      pairs: Sequence[tuple[str | None, str]],
      timeout_s: float | None = None,
  ) -> list[Verdict]:
    """Grades ``(pred, gold)`` pairs; never raises for a bad pair.

    Args:
      pairs: Predicted and gold answer strings; a None prediction is
        "no answer".
      timeout_s: Per-pair deadline for this call; default: the verifier's.

    Returns:
      One :class:`Verdict` per pair, in order.
    """
    verdicts: list[Verdict | None] = [None] * len(pairs)
    todo = []
    for i, (pred, gold) in enumerate(pairs):
      if not isinstance(gold, str) or not gold.strip():
        verdicts[i] = Verdict(False, "error")
      elif pred is None or not isinstance(pred, str) or not pred.strip():
        verdicts[i] = Verdict(False, "no_answer")
      elif len(pred) > self.max_chars:
        verdicts[i] = Verdict(False, "too_long")
      elif strings_equal(pred, gold):
        verdicts[i] = Verdict(True, "string")
      elif self.pool is None:
        verdicts[i] = Verdict(False, "unequal")
      else:
        todo.append(i)
    if todo:
      results = self.pool.map(
          math_verify_equal,
          [(pairs[i][0], pairs[i][1]) for i in todo],
          timeout_s,
      )
      for i, result in zip(todo, results, strict=True):
        if result.status != worker_pool.STATUS_OK:
          verdicts[i] = Verdict(False, result.status)
        elif result.value:
          verdicts[i] = Verdict(True, "math_verify")
        else:
          verdicts[i] = Verdict(False, "unequal")
    return verdicts  # type: ignore[return-value]

  def verify(
      self, pred: str | None, gold: str, timeout_s: float | None = None
  ) -> Verdict:
    """Grades one pair; see :meth:`verify_many`."""
    return self.verify_many([(pred, gold)], timeout_s)[0]

  def close(self) -> None:
    """Stops the workers. Idempotent."""
    if self.pool is not None:
      self.pool.close()

  def __enter__(self) -> Verifier:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_DEFAULT: Verifier | None = None
_DEFAULT_LOCK = threading.Lock()


def default_verifier() -> Verifier:
  """A process-wide :class:`Verifier` (2 workers, 5 s), created on first use.

  It is shut down at interpreter exit or by :func:`shutdown_default_verifier`.
  """
  global _DEFAULT
  with _DEFAULT_LOCK:
    if _DEFAULT is None:
      _DEFAULT = Verifier()
      atexit.register(shutdown_default_verifier)
    return _DEFAULT


def shutdown_default_verifier() -> None:
  """Stops the default verifier's workers; the next use starts new ones."""
  global _DEFAULT
  with _DEFAULT_LOCK:
    if _DEFAULT is not None:
      _DEFAULT.close()
      _DEFAULT = None


def is_equiv(
    pred: str | None,
    gold: str,
    *,
    verifier: Verifier | None = None,
    use_math_verify: bool = True,
) -> bool:
  """True if ``pred`` and ``gold`` are the same answer (docs/methods.md, "Grading").

  Args:
    pred: Predicted answer (None: no answer, never equal).
    gold: Gold answer.
    verifier: Grades what the fast path cannot; default: the shared one.
    use_math_verify: False stops at the fast path.

  Returns:
    The grade; a timeout or crash in the verifier grades False.
  """
  if pred is None or not isinstance(pred, str):
    return False
  if strings_equal(pred, gold):
    return True
  if not use_math_verify:
    return False
  return (verifier or default_verifier()).verify(pred, gold).equal
