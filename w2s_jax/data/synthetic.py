"""A verifiable synthetic reasoning task: chains of modular arithmetic.

A problem is a left-to-right chain over Z_m, ``((x0 op1 a1) op2 a2) ...``,
asked tersely so that prompt + solution stay short enough for a CPU study
(``Q:9*0+0?`` -> ``A:9*0=0;0+0=0#0``, <= 48 characters at the default
difficulty). Each step is one fact of a small table (``a op b mod m``: 242
facts for mod 11 with ``+`` and ``*``), so a tiny model can memorise the
knowledge and the study can vary it independently of the format.

What the task expresses (../shared/STUDY.md):

* Difficulty knobs: steps, modulus, operator set, distractor clauses (an
  unused expression before the asked one, ``Q:4+2;9*0+0?``).
* Solution styles for one problem, far apart as distributions (RSD):
  ``terse`` ``A:9*0=0;0+0=0#0``, ``postfix`` ``A:9 0*=0;0 0+=0#0``,
  ``verbose`` ``A:9 times 0 is 0, 0 plus 0 is 0, so 0`` and ``running``
  ``A:0;0#0`` (results only).
* Weak teachers: a systematically perturbed fact table and/or random
  per-step slips; traces keep the format and answer with their own last
  result, so a grader marks them wrong.
* Latent skill without the format: the ``latent`` style writes the whole
  computation in another notation (``c:9*0+0.9*0=0,0+0=0 a0``) for
  pretraining a strong student; ``fact_records`` gives bare facts.
* Grading: ``answer_of``, ``grade`` and ``step_accuracy`` (STUDY rule 3).

Train and test are disjoint by problem: a hash of (seed, core problem)
assigns each problem to the test bucket with probability ``test_fraction``,
independent of how many problems are drawn, so the test set never moves
when the training set grows. Distractors are not part of the identity.

Shape legend (numpy arrays): O operators, M modulus.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import numpy as np

# op char -> word used by the verbose style.
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_WORD_OPS = {w: op for op, w in OP_WORDS.items()}
SPLITS = ("train", "test", "pretrain")
# Independent random streams per split; the values are arbitrary constants.
_SPLIT_SALT = {"train": 1, "test": 2, "pretrain": 3, "facts": 4}
# Problem spaces up to this size are enumerated (exact bucket sizes, exact
# "too many problems" errors); larger ones are rejection-sampled.
_ENUMERATE_LIMIT = 1 << 17


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


def _unit_hash(seed: int, key: str) -> float:
  digest = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64


def _problem(task: TaskConfig, start: int, ops: Sequence[str], args) -> Problem:
  return Problem(task.modulus, int(start), "".join(ops), tuple(map(int, args)))


def _candidates(
    task: TaskConfig, rng: np.random.Generator
) -> Iterator[Problem]:
  """Every problem once in random order (small spaces), else random draws."""
  m, k = task.modulus, task.steps
  if task.space_size <= _ENUMERATE_LIMIT:
    grid = list(itertools.product(range(m), *[task.ops, range(m)] * k))
    for j in rng.permutation(len(grid)):
      row = grid[j]
      yield _problem(task, row[0], row[1::2], row[2::2])
  else:
    while True:
      ops = rng.choice(list(task.ops), size=k)
      yield _problem(task, rng.integers(m), ops, rng.integers(m, size=k))


def sample_problems(
    task: TaskConfig,
    split: str,
    n: int,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> list[Problem]:
  """Draws ``n`` distinct problems of one split.

  ``test`` draws from the hashed test bucket, ``train`` and ``pretrain`` (two
  independent streams that may overlap) from the rest. The draw for a
  smaller ``n`` is a prefix of the draw for a larger one.

  Args:
    task: Difficulty.
    split: One of ``SPLITS``.
    n: How many problems.
    seed: Data seed; fixes the test bucket and every draw.
    test_fraction: Share of the problem space in the test bucket.

  Returns:
    ``n`` problems, distractors drawn per problem.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: choose one of {SPLITS}.")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction}: must be in (0, 1).")
  if n < 0:
    raise ValueError(f"n={n}: must be >= 0.")
  rng = np.random.default_rng([seed, _SPLIT_SALT[split]])
  want_test, seen, out = split == "test", set(), []
  # Rejection sampling has no exact bucket size; give up after many draws.
  enumerated = task.space_size <= _ENUMERATE_LIMIT
  max_draws = float("inf") if enumerated else 64 * n + 10_000
  for draws, p in enumerate(_candidates(task, rng)):
    if len(out) == n or draws >= max_draws:
      break
    if (_unit_hash(seed, p.key) < test_fraction) != want_test or p.key in seen:
      continue
    seen.add(p.key)
    d_rng = np.random.default_rng([seed, _SPLIT_SALT[split], len(out), 1])
    distractors = tuple(
        (
            int(d_rng.integers(task.modulus)),
            str(d_rng.choice(list(task.ops))),
            int(d_rng.integers(task.modulus)),
        )
        for _ in range(task.distractors)
    )
    out.append(dataclasses.replace(p, distractors=distractors))
  if len(out) < n:
    raise ValueError(
        f"Asked for {n} {split} problems but only {len(out)} distinct ones"
        f" exist in that bucket ({task}, test_fraction={test_fraction});"
        " ask for fewer or raise steps/modulus."
    )
  return out


def make_records(
    task: TaskConfig,
    split: str,
    n: int,
    *,
    seed: int = 0,
    styles: Sequence[str] = ("terse",),
    test_fraction: float = 0.2,
    facts: FactTable | None = None,
    slip_prob: float = 0.0,
    error_seed: int = 0,
) -> Iterator[dict[str, object]]:
  """Dataset rows: one per (problem, style), in a fixed order.

  Args:
    task, split, n, seed, test_fraction: As in ``sample_problems``.
    styles: Solution styles to write for every problem.
    facts: Fact table of the solver (a perturbed one makes a weak teacher).
    slip_prob: Per-step slip probability of the solver.
    error_seed: Seeds the slips (per problem and style, order-free).

  Yields:
    ``{id, spec, question, solution, style, answer, answer_text, correct}``;
    ``id`` names the problem (shared by its styles), ``answer`` is the true
    answer and ``correct`` whether the solution reaches it.
  """
  for style in styles:
    _style(style)
  problems = sample_problems(
      task, split, n, seed=seed, test_fraction=test_fraction
  )
  for i, p in enumerate(problems):
    for style in styles:
      rng = np.random.default_rng(
          [error_seed, _SPLIT_SALT[split], i, list(STYLES).index(style)]
      )
      solution = noisy_trace(
          p, style, facts=facts, slip_prob=slip_prob, rng=rng
      )
      yield {
          "id": f"{split}-{i:06d}",
          "spec": p.spec,
          "question": prompt(p, style),
          "solution": solution,
          "style": style,
          "answer": p.answer,
          "answer_text": str(p.answer),
          "correct": answer_of(solution, style) == p.answer,
      }


def fact_records(
    facts: FactTable, n: int, *, per_line: int = 8, seed: int = 0
) -> Iterator[dict[str, object]]:
  """A bare-facts corpus, ``f:`` + ``3*7=10;2+5=7;...``, for comparison.

  Each line holds ``per_line`` distinct facts drawn uniformly from ``facts``
  (a perturbed table gives a corrupted corpus; ``correct`` tells). Rows use
  the schema of ``make_records`` with ``spec`` empty and ``answer`` -1.
  """
  if not 1 <= per_line <= facts.num_facts:
    raise ValueError(f"per_line={per_line}: must be in [1, {facts.num_facts}].")
  rng = np.random.default_rng([seed, _SPLIT_SALT["facts"]])
  gold = FactTable.gold(facts.modulus, facts.ops).table_OMM
  num_o, m = len(facts.ops), facts.modulus
  for i in range(n):
    flat = rng.choice(facts.num_facts, per_line, replace=False)
    o_F, a_F, b_F = np.unravel_index(flat, (num_o, m, m))
    c_F = facts.table_OMM[o_F, a_F, b_F]
    yield {
        "id": f"facts-{i:06d}",
        "spec": "",
        "question": "f:",
        "solution": ";".join(
            f"{a}{facts.ops[o]}{b}={c}"
            for o, a, b, c in zip(o_F, a_F, b_F, c_F, strict=True)
        ),
        "style": "facts",
        "answer": -1,
        "answer_text": "",
        "correct": bool((c_F == gold[o_F, a_F, b_F]).all()),
    }
