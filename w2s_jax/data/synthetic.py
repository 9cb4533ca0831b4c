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
* Grading: ``answer_of``, ``grade`` and ``step_accuracy`` (STUDY rule 3);
  ``grade(..., notation="any")`` / ``answer_any`` accept an answer in any
  style and ``format_ok`` checks the asked format, so skill and format are
  measured apart.

Train, validation and test are disjoint by problem: a hash of (seed, core
problem) assigns each problem to the test bucket with probability
``test_fraction``, and a second hash puts a ``val_fraction`` of the rest in
the validation bucket (for choosing checkpoints and learning rates, never
the test set); both are independent of how many problems are drawn, so the
held-out sets never move when the training set grows. Distractors are not
part of the identity.

Layout: ``synthetic_task`` holds problems, fact tables, styles and traces,
``synthetic_grading`` the graders; this module draws problems per split and
writes dataset rows, and re-exports the public names of both.

Shape legend (numpy arrays): O operators, M modulus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from w2s_jax.data.synthetic_grading import (
    answer_any,
    answer_of,
    best_step_accuracy,
    format_ok,
    grade,
    parse_steps,
    step_accuracy,
)
from w2s_jax.data.synthetic_task import (
    ALPHABET,
    OP_WORDS,
    STYLES,
    FactTable,
    Problem,
    Step,
    TaskConfig,
    _style,
    gold_trace,
    noisy_trace,
    prompt,
    render,
    solve,
)

__all__ = [
    "SPLITS",
    "fact_records",
    "make_records",
    "sample_problems",
    # Re-exported from synthetic_task.
    "ALPHABET",
    "OP_WORDS",
    "STYLES",
    "FactTable",
    "Problem",
    "Step",
    "TaskConfig",
    "gold_trace",
    "noisy_trace",
    "prompt",
    "render",
    "solve",
    # Re-exported from synthetic_grading.
    "answer_any",
    "answer_of",
    "best_step_accuracy",
    "format_ok",
    "grade",
    "parse_steps",
    "step_accuracy",
]

SPLITS = ("train", "test", "pretrain", "val")
# Independent random streams per split; the values are arbitrary constants.
_SPLIT_SALT = {"train": 1, "test": 2, "pretrain": 3, "facts": 4, "val": 5}
# Problem spaces up to this size are enumerated (exact bucket sizes, exact
# "too many problems" errors); larger ones are rejection-sampled.
_ENUMERATE_LIMIT = 1 << 17


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
    val_fraction: float = 0.1,
) -> list[Problem]:
  """Draws ``n`` distinct problems of one split.

  ``test`` draws from the hashed test bucket, ``val`` from the hashed
  validation bucket, ``train`` and ``pretrain`` (two independent streams
  that may overlap) from the rest. The draw for a smaller ``n`` is a prefix
  of the draw for a larger one.

  Args:
    task: Difficulty.
    split: One of ``SPLITS``.
    n: How many problems.
    seed: Data seed; fixes the buckets and every draw.
    test_fraction: Share of the problem space in the test bucket.
    val_fraction: Share of the non-test problems in the validation bucket.

  Returns:
    ``n`` problems, distractors drawn per problem.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: choose one of {SPLITS}.")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction}: must be in (0, 1).")
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1).")
  if n < 0:
    raise ValueError(f"n={n}: must be >= 0.")
  rng = np.random.default_rng([seed, _SPLIT_SALT[split]])
  seen, out = set(), []

  def bucket(key: str) -> str:
    if _unit_hash(seed, key) < test_fraction:
      return "test"
    return "val" if _unit_hash(seed, "val|" + key) < val_fraction else "train"

  want = {"pretrain": "train"}.get(split, split)
  # Rejection sampling has no exact bucket size; give up after many draws.
  enumerated = task.space_size <= _ENUMERATE_LIMIT
  max_draws = float("inf") if enumerated else 64 * n + 10_000
  for draws, p in enumerate(_candidates(task, rng)):
    if len(out) == n or draws >= max_draws:
      break
    if p.key in seen or bucket(p.key) != want:
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
        f" exist in that bucket ({task}, test_fraction={test_fraction},"
        f" val_fraction={val_fraction});"
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
