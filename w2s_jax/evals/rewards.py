"""Rewards: correctness (GSM8K, MATH), format, and surrogate format-length.

Pure Python/NumPy on decoded text; nothing here touches JAX. Every grader is
total: a completion that cannot be parsed, a verifier timeout or crash, or a
reward function that raises gives the *wrong* reward and is counted in a
:class:`RewardStats`; no exception reaches the training loop for a bad
sample. (Bad *arguments*, e.g. an unknown task, still raise at once.)

* Correctness (docs/methods.md, "Grading"). GSM8K: the answer by the first rule of
  :func:`extract.extract_answer` that fires, compared numerically
  (``|a - b| < 1e-6``, exact rationals) or, with ``strict=True``, as exact
  strings (SSB's grader). MATH: the last box, graded by
  :class:`equivalence.Verifier` (fast path, then Math-Verify in workers).
* Surrogate format-length reward (docs/methods.md, "Surrogate rewards", arXiv 2505.19439, code
  insightLLM/rl-without-gt), with ``x = L / L_max``::

    R_l = 1 - (1 - x/p)^2              0 <= x <= p
        = 1 - 2((x - p)/(1 - p))^2     p <  x <= 1
    paper: R = 1 + R_l                         if format right else min(0, R_l)
    code:  R = 0.5(soft + answer_format) + R_l if answer_format else min(0, R_l)

  ``soft`` is 1 when a ``<think>...</think>`` block is present. With the
  Qwen-Math template there is none, so format is worth 0.5 in the code and 1
  in the paper. Format right: an answer is found (``<answer>...</answer>``,
  else the last box after the last ``</think>``), is non-empty, and parses
  (here: Math-Verify's LaTeX parser in a worker, where the reference code
  uses ``sympy.parse_expr``, i.e. ``eval``, on model output).

The DAPO overlong penalty lives with the policy-gradient losses, not here.
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import math
from typing import Any, Callable, Literal, Sequence

import numpy as np

from w2s_jax.evals import equivalence, extract, worker_pool

Variant = Literal["paper", "code", "format_only"]

CORRECT = "correct"
WRONG = "wrong"
NO_ANSWER = "no_answer"
ERROR = "error"
# Verifier outcomes that are failures rather than grades.
_FAILURES = ("timeout", "crash", "error", "too_long")
_TOLERANCE = fractions.Fraction(1, 10**6)
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


@dataclasses.dataclass(frozen=True)
class Grade:
  """The grade of one completion.

  Attributes:
    correct: Whether the answer matches the gold answer.
    answer: The extracted answer (None if nothing was extracted).
    rule: The extraction rule that fired (``extract.RULES``).
    status: ``"correct"``, ``"wrong"``, ``"no_answer"``, or a failure:
      ``"timeout"``, ``"crash"``, ``"error"``, ``"too_long"``.
  """

  correct: bool
  answer: str | None
  rule: str
  status: str


@dataclasses.dataclass
class RewardStats:
  """Counts over graded samples; merge across batches, log as metrics.

  Attributes:
    total: Samples graded.
    correct: Samples graded correct (for format rewards: format right).
    statuses: Count per status (``"no_answer"``, ``"timeout"``, ...).
    rules: Count per extraction rule that fired.
  """

  total: int = 0
  correct: int = 0
  statuses: collections.Counter = dataclasses.field(
      default_factory=collections.Counter
  )
  rules: collections.Counter = dataclasses.field(
      default_factory=collections.Counter
  )

  def add(self, status: str, correct: bool, rule: str | None = None) -> None:
    self.total += 1
    self.correct += int(correct)
    self.statuses[status] += 1
    if rule is not None:
      self.rules[rule] += 1

  def merge(self, other: RewardStats) -> None:
    self.total += other.total
    self.correct += other.correct
    self.statuses.update(other.statuses)
    self.rules.update(other.rules)

  @property
  def failures(self) -> int:
    """Samples whose grading timed out, crashed or raised."""
    return sum(self.statuses[s] for s in _FAILURES)

  def metrics(self, prefix: str = "reward") -> dict[str, float]:
    """Fractions keyed ``{prefix}/accuracy``, ``{prefix}/status/<s>``, ..."""
    n = max(self.total, 1)
    out = {
        f"{prefix}/count": float(self.total),
        f"{prefix}/accuracy": self.correct / n,
        f"{prefix}/failure_frac": self.failures / n,
    }
    for status, count in sorted(self.statuses.items()):
      out[f"{prefix}/status/{status}"] = count / n
    for rule, count in sorted(self.rules.items()):
      out[f"{prefix}/rule/{rule}"] = count / n
    return out


def parse_number(answer: str) -> fractions.Fraction | None:
  """Exact value of a numeric answer (``"$1,200"``, ``"\\frac{3}{2}"``, ...)."""
  if len(answer) > 200:
    return None
  return equivalence.as_rational(equivalence.normalize(answer))


def gsm8k_equal(pred: str | None, gold: str, *, strict: bool = False) -> bool:
  """GSM8K grade: numeric ``|pred - gold| < 1e-6``, or exact with ``strict``.

  A prediction that is not a number as a whole (``"The answer is 18."``
  after ``####``) is read as the last number in it.

  Args:
    pred: Extracted predicted answer; None is wrong.
    gold: Gold answer (see :func:`extract.gsm8k_gold`).
    strict: Exact string match of the stripped strings (SSB, docs/methods.md, "SSB").

  Returns:
    The grade.
  """
  if pred is None:
    return False
  if strict:
    return pred.strip() == gold.strip()
  a, b = parse_number(pred), parse_number(gold)
  if a is None:
    last = extract.extract_last_number(pred)
    a = None if last is None else parse_number(last)
  return a is not None and b is not None and abs(a - b) < _TOLERANCE


def _check_lengths(completions: Sequence[Any], other: Sequence[Any], name):
  if len(completions) != len(other):
    raise ValueError(
        f"got {len(completions)} completions but {len(other)} {name}; pass"
        f" one {name[:-1]} per completion (repeat a problem's gold answer for"
        " each of its samples)."
    )


def grade_completions(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    task: extract.Task,
    verifier: equivalence.Verifier | None = None,
    use_math_verify: bool = True,
    strict: bool = False,
    stats: RewardStats | None = None,
) -> list[Grade]:
  """Grades completions against gold answers; never raises for a sample.

  Args:
    completions: Decoded model outputs.
    golds: One gold answer per completion.
    task: ``"gsm8k"`` or ``"math"``.
    verifier: MATH only; default: the shared :func:`default_verifier`.
    use_math_verify: MATH only; False grades by the string fast path.
    strict: GSM8K only; exact string match.
    stats: Updated in place when given.

  Returns:
    One :class:`Grade` per completion.
  """
  if task not in extract.TASKS:
    raise ValueError(f"task must be one of {extract.TASKS}, got {task!r}.")
  _check_lengths(completions, golds, "golds")
  grades: list[Grade | None] = [None] * len(completions)
  extractions: list[extract.Extraction | None] = [None] * len(completions)
  for i, completion in enumerate(completions):
    try:
      extractions[i] = extract.extract_answer(completion, task)
    except Exception:  # noqa: BLE001 - e.g. a None completion.
      grades[i] = Grade(False, None, extract.RULE_NONE, ERROR)
      continue
    if extractions[i].answer is None:
      grades[i] = Grade(False, None, extractions[i].rule, NO_ANSWER)
  pending = [i for i, g in enumerate(grades) if g is None]
  if task == "gsm8k":
    for i in pending:
      ex = extractions[i]
      try:
        ok = gsm8k_equal(ex.answer, golds[i], strict=strict)
        grades[i] = Grade(ok, ex.answer, ex.rule, CORRECT if ok else WRONG)
      except Exception:  # noqa: BLE001
        grades[i] = Grade(False, ex.answer, ex.rule, ERROR)
  elif pending:
    pairs = [(extractions[i].answer, golds[i]) for i in pending]
    try:
      if use_math_verify:
        verifier = verifier or equivalence.default_verifier()
        verdicts = verifier.verify_many(pairs)
      else:
        verdicts = [
            equivalence.Verdict(equivalence.strings_equal(p, g), "string")
            for p, g in pairs
        ]
    except Exception:  # noqa: BLE001 - a broken pool grades as errors.
      verdicts = [equivalence.Verdict(False, ERROR)] * len(pairs)
    for i, verdict in zip(pending, verdicts, strict=True):
      ex = extractions[i]
      if verdict.equal:
        status = CORRECT
      elif verdict.status in _FAILURES or verdict.status == NO_ANSWER:
        status = verdict.status
      else:
        status = WRONG
      grades[i] = Grade(verdict.equal, ex.answer, ex.rule, status)
  if stats is not None:
    for grade in grades:
      stats.add(grade.status, grade.correct, grade.rule)
  return grades  # type: ignore[return-value]


def correctness_rewards(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    task: extract.Task,
    correct_reward: float = 1.0,
    wrong_reward: float = 0.0,
    stats: RewardStats | None = None,
    **grade_kwargs,
) -> np.ndarray:
  """``correct_reward`` for a correct answer, else ``wrong_reward``.

  Args:
    completions: Decoded model outputs.
    golds: One gold answer per completion.
    task: ``"gsm8k"`` or ``"math"``.
    correct_reward: Reward of a correct sample (DAPO uses +1).
    wrong_reward: Reward of any other sample (DAPO uses -1).
    stats: Updated in place when given.
    **grade_kwargs: ``verifier``, ``use_math_verify``, ``strict``.

  Returns:
    float32 rewards, shape ``[len(completions)]``.
  """
  grades = grade_completions(
      completions, golds, task=task, stats=stats, **grade_kwargs
  )
  correct = np.array([g.correct for g in grades], dtype=bool)
  return np.where(correct, correct_reward, wrong_reward).astype(np.float32)


def apply_reward_fn(
    fn: Callable[..., float],
    completions: Sequence[str],
    golds: Sequence[Any],
    *,
    pool: worker_pool.WorkerPool | None = None,
    timeout_s: float | None = None,
    wrong_reward: float = 0.0,
    stats: RewardStats | None = None,
) -> np.ndarray:
  """Runs a user reward ``fn(completion, gold) -> float`` without risk.

  A call that raises, returns a non-finite or non-numeric value, or (with a
  ``pool``) runs past its deadline, gives ``wrong_reward`` and is counted in
  ``stats`` under its failure status.

  Args:
    fn: The reward function; with a pool it must be a top-level function.
    completions: Decoded model outputs.
    golds: One gold value per completion.
    pool: Run in these worker processes, with a deadline per call; without
      one, calls run in-process (exceptions caught, no deadline).
    timeout_s: Per-call deadline; default: the pool's.
    wrong_reward: Reward of a failed call.
    stats: Updated in place when given; ``correct`` counts reward > 0.

  Returns:
    float32 rewards, shape ``[len(completions)]``.
  """
  _check_lengths(completions, golds, "golds")
  if pool is None:
    results = []
    for completion, gold in zip(completions, golds, strict=True):
      try:
        results.append(worker_pool.TaskResult("ok", fn(completion, gold)))
      except Exception as e:  # noqa: BLE001 - counted, never propagated.
        results.append(worker_pool.TaskResult(ERROR, error=repr(e)))
  else:
    try:
      results = pool.map(fn, list(zip(completions, golds)), timeout_s)
    except Exception as e:  # noqa: BLE001 - a broken pool fails every call.
      results = [worker_pool.TaskResult(ERROR, error=repr(e))] * len(golds)
  rewards = np.full(len(results), wrong_reward, dtype=np.float32)
  for i, result in enumerate(results):
    status = result.status
    if status == "ok":
      try:
        value = float(result.value)
      except (TypeError, ValueError):
        value = math.nan
      if math.isfinite(value):
        rewards[i] = value
      else:
        status = ERROR
    if stats is not None:
      ok = status == "ok" and rewards[i] > 0
      stats.add(status if status != "ok" else (CORRECT if ok else WRONG), ok)
  return rewards


# ---------------------------------------------------------------------------
# Format and surrogate length rewards (docs/methods.md, "Surrogate rewards").
# ---------------------------------------------------------------------------


def soft_format(completion: str) -> float:
  """1.0 if the completion has a ``<think>...</think>`` block, else 0.0."""
  # str.find, not a lazy regex: that rescans to the end for every unclosed
  # <think>, quadratic on adversarial output.
  start = completion.find("<think>")
  if start < 0:
    return 0.0
  return 1.0 if completion.find("</think>", start) >= 0 else 0.0


def format_answer(completion: str) -> str | None:
  """The answer the format check inspects (rl-without-gt's parse order).

  Inside ``<answer>...</answer>``: its last box, else its stripped text.
  Otherwise: the last box after the last ``</think>`` (the whole completion
  when there is none).
  """
  # First <answer> to last </answer> (a greedy match), found with str methods:
  # the equivalent regex backtracks quadratically on repeated open tags.
  start = completion.find(_ANSWER_OPEN)
  end = completion.rfind(_ANSWER_CLOSE)
  if 0 <= start and start + len(_ANSWER_OPEN) <= end:
    inner = completion[start + len(_ANSWER_OPEN) : end]
    answer = extract.extract_boxed(inner)
    if answer is None:
      answer = inner.strip()
  else:
    answer = extract.extract_boxed(extract.strip_think(completion))
  return answer or None


def answer_formats(
    completions: Sequence[str],
    *,
    verifier: equivalence.Verifier | None = None,
    check_parse: bool = True,
    stats: RewardStats | None = None,
) -> np.ndarray:
  """Whether each completion's answer is present, non-empty and parses.

  Args:
    completions: Decoded model outputs.
    verifier: Its workers run the parse check; default: the shared one.
    check_parse: False accepts any non-empty answer (no processes).
    stats: Updated in place; ``correct`` counts format-right samples.

  Returns:
    bool array, shape ``[len(completions)]``.
  """
  answers: list[str | None] = []
  statuses: list[str] = []
  for completion in completions:
    try:
      answers.append(format_answer(completion))
      statuses.append("format_ok" if answers[-1] else NO_ANSWER)
    except Exception:  # noqa: BLE001 - e.g. a None completion.
      answers.append(None)
      statuses.append(ERROR)
  ok = np.array([a is not None for a in answers], dtype=bool)
  todo = [i for i, a in enumerate(answers) if a is not None]
  if check_parse and todo:
    verifier = verifier or equivalence.default_verifier()
    for i in todo:
      if len(answers[i]) > verifier.max_chars:  # Not a final answer.
        ok[i], statuses[i] = False, "too_long"
    todo = [i for i in todo if ok[i]]
    if verifier.pool is not None and todo:
      try:
        results = verifier.pool.map(
            equivalence.latex_parses, [(answers[i],) for i in todo]
        )
      except Exception as e:  # noqa: BLE001
        results = [worker_pool.TaskResult(ERROR, error=repr(e))] * len(todo)
      for i, result in zip(todo, results, strict=True):
        ok[i] = result.status == "ok" and bool(result.value)
        if result.status != "ok":
          statuses[i] = result.status
        elif not ok[i]:
          statuses[i] = "unparsable"
  if stats is not None:
    for status, good in zip(statuses, ok, strict=True):
      stats.add(status, bool(good))
  return ok


def length_reward(
    num_tokens: Any, max_tokens: int = 3072, peak: float = 0.5
) -> np.ndarray:
  """Surrogate length reward R_l(x), ``x = num_tokens / max_tokens``.

  Rises from 0 at x = 0 to 1 at x = ``peak`` (zero slope there), then falls
  to -1 at x = 1. Lengths beyond ``max_tokens`` are clipped to x = 1.

  Args:
    num_tokens: Completion lengths in tokens, any shape.
    max_tokens: L_max (3072 in the reference code).
    peak: p in (0, 1).

  Returns:
    float64 array of the input's shape.
  """
  if not 0.0 < peak < 1.0:
    raise ValueError(f"peak must be in (0, 1), got {peak}.")
  if max_tokens <= 0:
    raise ValueError(f"max_tokens must be > 0, got {max_tokens}.")
  n = np.asarray(num_tokens, dtype=np.float64)
  if np.any(n < 0):
    raise ValueError("num_tokens must be >= 0; pass completion lengths.")
  x = np.clip(n / max_tokens, 0.0, 1.0)
  rise = 1.0 - (1.0 - x / peak) ** 2
  fall = 1.0 - 2.0 * ((x - peak) / (1.0 - peak)) ** 2
  return np.where(x <= peak, rise, fall)


def combine_surrogate(
    format_ok: Any, soft: Any, r_len: Any, variant: Variant = "code"
) -> np.ndarray:
  """The surrogate reward from its parts (docs/methods.md, "Surrogate rewards").

  Args:
    format_ok: Answer-format indicator, bool array.
    soft: ``<think>`` indicator in {0, 1}.
    r_len: :func:`length_reward` values.
    variant: ``"paper"`` (format worth 1), ``"code"`` (format worth
      ``0.5 (soft + 1)``), or ``"format_only"`` (``0.5 (soft + format)``, the
      code's format-only baseline, no length term).

  Returns:
    float64 rewards.
  """
  format_ok = np.asarray(format_ok, dtype=bool)
  soft = np.asarray(soft, dtype=np.float64)
  r_len = np.asarray(r_len, dtype=np.float64)
  if variant == "paper":
    return np.where(format_ok, 1.0 + r_len, np.minimum(0.0, r_len))
  if variant == "code":
    return np.where(
        format_ok, 0.5 * (soft + 1.0) + r_len, np.minimum(0.0, r_len)
    )
  if variant == "format_only":
    return 0.5 * (soft + format_ok)
  raise ValueError(
      f"variant must be 'paper', 'code' or 'format_only', got {variant!r}."
  )


def surrogate_rewards(
    completions: Sequence[str],
    num_tokens: Any,
    *,
    variant: Variant = "code",
    max_tokens: int = 3072,
    peak: float = 0.5,
    verifier: equivalence.Verifier | None = None,
    check_parse: bool = True,
    stats: RewardStats | None = None,
) -> np.ndarray:
  """Format-length surrogate reward of each completion (no gold answer used).

  Args:
    completions: Decoded model outputs.
    num_tokens: Their lengths in tokens, shape ``[len(completions)]``.
    variant: See :func:`combine_surrogate`.
    max_tokens: L_max.
    peak: p.
    verifier: Runs the parse check; default: the shared one.
    check_parse: See :func:`answer_formats`.
    stats: Format counts, updated in place.

  Returns:
    float32 rewards, shape ``[len(completions)]``.
  """
  num_tokens = np.asarray(num_tokens)
  if num_tokens.shape != (len(completions),):
    raise ValueError(
        f"num_tokens must have shape ({len(completions)},), one length per"
        f" completion; got {num_tokens.shape}."
    )
  fmt = answer_formats(
      completions, verifier=verifier, check_parse=check_parse, stats=stats
  )
  soft = np.array(
      [soft_format(c) if isinstance(c, str) else 0.0 for c in completions]
  )
  r_len = length_reward(num_tokens, max_tokens, peak)
  return combine_surrogate(fmt, soft, r_len, variant).astype(np.float32)
