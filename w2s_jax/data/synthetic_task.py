"""The synthetic task's objects: difficulty, problems, facts, styles, traces.

A problem is a left-to-right chain over Z_m, ``((x0 op1 a1) op2 a2) ...``.
``solve`` works it step by step with a ``FactTable`` (the gold table, or a
weak teacher's perturbed one, plus random slips) and ``render`` writes the
steps in one of the ``STYLES``. ``synthetic`` describes the task as a whole
and re-exports every public name of this module.

Shape legend (numpy arrays): O operators, M modulus.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# op char -> word used by the verbose style.
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_WORD_OPS = {w: op for op, w in OP_WORDS.items()}


def _apply(op: str, a: int, b: int, modulus: int) -> int:
  if op == "+":
    return (a + b) % modulus
  if op == "-":
    return (a - b) % modulus
  return (a * b) % modulus


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Difficulty of the task.

  Attributes:
    modulus: Arithmetic is mod this; operands and results lie in [0, m).
    ops: Operators to draw from, a subset of ``+-*``.
    steps: Operations per problem (the chain length).
    distractors: Unused single-operation clauses put before the asked one.
  """

  modulus: int = 11
  ops: str = "+*"
  steps: int = 2
  distractors: int = 0

  def __post_init__(self):
    if not isinstance(self.modulus, int) or not 2 <= self.modulus <= 1000:
      raise ValueError(
          f"modulus={self.modulus!r}: must be an int in [2, 1000]; the fact"
          " table has len(ops) * modulus**2 entries."
      )
    if (
        not self.ops
        or set(self.ops) - set(OP_WORDS)
        or len(set(self.ops)) < len(self.ops)
    ):
      raise ValueError(
          f"ops={self.ops!r}: must be distinct characters from '+-*'."
      )
    if not isinstance(self.steps, int) or not 1 <= self.steps <= 64:
      raise ValueError(f"steps={self.steps!r}: must be an int in [1, 64].")
    if not isinstance(self.distractors, int) or not 0 <= self.distractors <= 16:
      raise ValueError(
          f"distractors={self.distractors!r}: must be an int in [0, 16]."
      )

  @property
  def space_size(self) -> int:
    """Number of distinct problems (distractors aside)."""
    return self.modulus ** (self.steps + 1) * len(self.ops) ** self.steps


@dataclasses.dataclass(frozen=True)
class Problem:
  """One chain ``((start ops[0] args[0]) ops[1] args[1]) ...`` mod modulus.

  Attributes:
    modulus: The modulus m.
    start: First operand x0.
    ops: One operator character per step.
    args: Right operand of each step.
    distractors: Unused ``(a, op, b)`` clauses shown before the question.
  """

  modulus: int
  start: int
  ops: str
  args: tuple[int, ...]
  distractors: tuple[tuple[int, str, int], ...] = ()

  def __post_init__(self):
    values = (self.start, *self.args)
    values += tuple(v for a, _, b in self.distractors for v in (a, b))
    if self.modulus < 2:
      raise ValueError(f"modulus={self.modulus}: must be >= 2.")
    ops = self.ops + "".join(op for _, op, _ in self.distractors)
    if (
        len(self.ops) != len(self.args)
        or not self.ops
        or set(ops) - set(OP_WORDS)
        or any(not 0 <= v < self.modulus for v in values)
    ):
      raise ValueError(
          f"Invalid problem {self!r}: needs one op from '+-*' per arg and"
          f" every value in [0, {self.modulus})."
      )

  @property
  def num_steps(self) -> int:
    return len(self.ops)

  @property
  def expr(self) -> str:
    """The asked expression, e.g. ``9*0+0``."""
    return str(self.start) + "".join(
        f"{op}{a}" for op, a in zip(self.ops, self.args, strict=True)
    )

  @property
  def key(self) -> str:
    """Identity used for the train/test split: ``11:9*0+0``."""
    return f"{self.modulus}:{self.expr}"

  @property
  def spec(self) -> str:
    """Lossless text form, ``11:9*0+0|4+2``; see ``from_spec``."""
    if not self.distractors:
      return self.key
    return (
        self.key + "|" + ",".join(f"{a}{o}{b}" for a, o, b in self.distractors)
    )

  @classmethod
  def from_spec(cls, spec: str) -> Problem:
    """Inverse of ``spec``."""
    m = re.fullmatch(r"(\d+):(\d+)((?:[-+*]\d+)+)(?:\|(.+))?", spec)
    if m is None:
      raise ValueError(
          f"Problem spec {spec!r} is malformed; expected e.g. '11:9*0+0' or"
          " '11:9*0+0|4+2' (modulus:expression|distractors)."
      )
    pairs = re.findall(r"([-+*])(\d+)", m[3])
    distractors = ()
    if m[4]:
      parts = [re.fullmatch(r"(\d+)([-+*])(\d+)", d) for d in m[4].split(",")]
      if not all(parts):
        raise ValueError(
            f"Problem spec {spec!r}: bad distractor list {m[4]!r}."
        )
      distractors = tuple((int(d[1]), d[2], int(d[3])) for d in parts)
    return cls(
        modulus=int(m[1]),
        start=int(m[2]),
        ops="".join(op for op, _ in pairs),
        args=tuple(int(a) for _, a in pairs),
        distractors=distractors,
    )

  @property
  def answer(self) -> int:
    return solve(self)[-1].result


class Step(NamedTuple):
  """One parsed or generated step ``left op right = result``.

  ``left``, ``op`` and ``right`` are None in styles that leave them implicit
  (``running``).
  """

  left: int | None
  op: str | None
  right: int | None
  result: int


@dataclasses.dataclass(frozen=True, eq=False)
class FactTable:
  """The knowledge a solver uses: ``table_OMM[o, a, b]`` = a ops[o] b.

  A gold table is modular arithmetic; ``perturbed`` makes a weak teacher
  whose wrong facts are systematic (the same facts are always wrong).
  """

  modulus: int
  ops: str
  table_OMM: np.ndarray

  @classmethod
  @functools.cache
  def gold(cls, modulus: int, ops: str) -> FactTable:
    """The correct table (cached; the array is read-only)."""
    TaskConfig(modulus=modulus, ops=ops)  # validates
    a_M1, b_1M = np.arange(modulus)[:, None], np.arange(modulus)[None, :]
    table = np.stack([_apply(op, a_M1, b_1M, modulus) for op in ops])
    table.flags.writeable = False
    return cls(modulus, ops, table)

  @property
  def num_facts(self) -> int:
    return self.table_OMM.size

  def __call__(self, a: int, op: str, b: int) -> int:
    if op not in self.ops:
      raise ValueError(
          f"Operator {op!r} is not in this fact table ({self.ops!r})."
      )
    return int(self.table_OMM[self.ops.index(op), a, b])

  def num_wrong(self) -> int:
    """How many facts differ from the gold table."""
    gold = FactTable.gold(self.modulus, self.ops).table_OMM
    return int((self.table_OMM != gold).sum())

  def perturbed(self, error_rate: float, seed: int) -> FactTable:
    """A copy with ``round(error_rate * num_facts)`` facts changed.

    Args:
      error_rate: Fraction of facts to make wrong, in [0, 1].
      seed: Which facts are wrong, and their wrong values.

    Returns:
      A new table; each chosen fact gets a different residue, uniformly.
    """
    if not 0.0 <= error_rate <= 1.0:
      raise ValueError(f"error_rate={error_rate}: must be in [0, 1].")
    rng = np.random.default_rng([seed, 0x7AB1E])
    table = self.table_OMM.copy().reshape(-1)
    idx = rng.choice(table.size, round(error_rate * table.size), replace=False)
    shift = rng.integers(1, self.modulus, size=idx.size)  # never 0: wrong
    table[idx] = (table[idx] + shift) % self.modulus
    table = table.reshape(self.table_OMM.shape)
    table.flags.writeable = False
    return FactTable(self.modulus, self.ops, table)


def solve(
    problem: Problem,
    facts: FactTable | None = None,
    *,
    slip_prob: float = 0.0,
    rng: np.random.Generator | None = None,
) -> list[Step]:
  """Works a problem step by step, possibly like a weak teacher.

  Args:
    problem: The problem.
    facts: Table to look facts up in; the gold table by default.
    slip_prob: Probability that a step's result is replaced by a uniformly
      random wrong residue (later steps build on the slip).
    rng: Needed when ``slip_prob > 0``.

  Returns:
    One step per operation; the last result is the trace's answer.
  """
  m = problem.modulus
  if facts is None:
    facts = FactTable.gold(m, "+-*")
  if facts.modulus != m or set(problem.ops) - set(facts.ops):
    raise ValueError(
        f"FactTable(mod {facts.modulus}, ops {facts.ops!r}) cannot solve"
        f" {problem.spec!r}; build it with the problem's modulus and ops."
    )
  if not 0.0 <= slip_prob <= 1.0:
    raise ValueError(f"slip_prob={slip_prob}: must be in [0, 1].")
  if slip_prob > 0 and rng is None:
    raise ValueError(
        "slip_prob > 0 needs an rng (np.random.default_rng(seed))."
    )
  steps, value = [], problem.start
  for op, arg in zip(problem.ops, problem.args, strict=True):
    result = facts(value, op, arg)
    if slip_prob > 0 and rng.random() < slip_prob:
      result = (result + int(rng.integers(1, m))) % m
    steps.append(Step(value, op, arg, result))
    value = result
  return steps


@dataclasses.dataclass(frozen=True)
class _Style:
  prefix: str  # opens the solution (the latent style opens in its prompt)
  step: str  # format of one step: {l} {o} {r} {c} {w}=op word
  sep: str
  answer: str  # marker before the final number
  step_re: re.Pattern[str]


_TERSE_RE = re.compile(r"(?P<l>\d+)(?P<o>[-+*])(?P<r>\d+)=(?P<c>\d+)")
STYLES: dict[str, _Style] = {
    "terse": _Style("A:", "{l}{o}{r}={c}", ";", "#", _TERSE_RE),
    "postfix": _Style(
        "A:",
        "{l} {r}{o}={c}",
        ";",
        "#",
        re.compile(r"(?P<l>\d+) (?P<r>\d+)(?P<o>[-+*])=(?P<c>\d+)"),
    ),
    "verbose": _Style(
        "A:",
        "{l} {w} {r} is {c}",
        ", ",
        ", so ",
        re.compile(
            r"(?P<l>\d+) (?P<w>plus|minus|times) (?P<r>\d+) is (?P<c>\d+)"
        ),
    ),
    "running": _Style("A:", "{c}", ";", "#", re.compile(r"(?P<c>\d+)")),
    "latent": _Style("", "{l}{o}{r}={c}", ",", " a", _TERSE_RE),
}


def _alphabet() -> str:
  chars = set("0123456789" + "".join(OP_WORDS) + "".join(OP_WORDS.values()))
  chars |= set("Q:?c.f=;")  # prompts, the latent prompt and the facts corpus
  for s in STYLES.values():
    chars |= set(s.prefix + s.sep + s.answer)
    chars |= set(s.step.format(l="", o="", r="", c="", w=""))
  return "".join(sorted(chars))


# Characters any prompt, solution or corpus line of this module can contain.
ALPHABET = _alphabet()


def _style(style: str) -> _Style:
  if style not in STYLES:
    raise ValueError(
        f"Unknown style {style!r}; choose one of {sorted(STYLES)}."
    )
  return STYLES[style]


def prompt(problem: Problem, style: str = "terse") -> str:
  """The prompt: ``Q:4+2;9*0+0?``, or ``c:4+2;9*0+0.`` for ``latent``."""
  _style(style)
  body = (
      "".join(f"{a}{o}{b};" for a, o, b in problem.distractors) + problem.expr
  )
  return f"c:{body}." if style == "latent" else f"Q:{body}?"


def render(steps: Sequence[Step], style: str) -> str:
  """Writes worked steps as a solution in ``style``; the answer is the last
  step's result, whether or not it is correct."""
  s = _style(style)
  body = s.sep.join(
      s.step.format(l=t.left, o=t.op, r=t.right, c=t.result, w=OP_WORDS[t.op])
      for t in steps
  )
  return f"{s.prefix}{body}{s.answer}{steps[-1].result}"


def gold_trace(problem: Problem, style: str = "terse") -> str:
  """The correct solution of ``problem`` in ``style``."""
  return render(solve(problem), style)


def noisy_trace(
    problem: Problem,
    style: str,
    *,
    facts: FactTable | None = None,
    slip_prob: float = 0.0,
    rng: np.random.Generator | None = None,
) -> str:
  """A weak teacher's solution: right format, imperfect knowledge."""
  return render(solve(problem, facts, slip_prob=slip_prob, rng=rng), style)
