"""Tests for w2s_jax.data.synthetic.

Answers are checked against an independent evaluator (Python's own integer
arithmetic on the prompt text, parenthesised left to right), never against
the module's own solver.
"""

import itertools
import re

import numpy as np
import pytest

from w2s_jax.data import synthetic as S
from w2s_jax.data import synthetic_grading, synthetic_task

STYLES = ("terse", "postfix", "verbose", "running", "latent")
TASKS = [
    S.TaskConfig(),
    S.TaskConfig(modulus=7, ops="+-*", steps=4, distractors=2),
    S.TaskConfig(modulus=13, ops="-*", steps=6),  # rejection-sampled space
    S.TaskConfig(modulus=101, ops="+", steps=1, distractors=1),
]


def _evaluate(question: str, modulus: int) -> int:
  """Python arithmetic on the asked clause of a ``Q:...?`` prompt."""
  clause = re.fullmatch(r"Q:(?:[^;]*;)*(.+)\?", question)[1]
  tokens = re.findall(r"\d+|[-+*]", clause)
  expr = tokens[0]
  for op, arg in zip(tokens[1::2], tokens[2::2], strict=True):
    expr = f"({expr}{op}{arg})"
  return eval(expr) % modulus  # noqa: S307 - digits and operators only


@pytest.mark.parametrize("task", TASKS, ids=str)
def test_answers_correct_by_construction(task):
  for split in S.SPLITS:
    for p in S.sample_problems(task, split, 60, seed=3):
      assert p.num_steps == task.steps
      assert len(p.distractors) == task.distractors
      truth = _evaluate(S.prompt(p), task.modulus)
      assert p.answer == truth
      for style in STYLES:
        trace = S.gold_trace(p, style)
        assert S.answer_of(trace, style) == truth
        assert S.grade(p, trace, style)
        assert S.step_accuracy(p, trace, style) == 1.0
        assert S.step_accuracy(p, trace, style, mode="chain") == 1.0


def test_records_match_independent_evaluator():
  rows = list(
      S.make_records(S.TaskConfig(distractors=1), "test", 200, styles=STYLES)
  )
  assert len(rows) == 200 * len(STYLES)
  for row in rows:
    p = S.Problem.from_spec(row["spec"])
    assert row["answer"] == _evaluate(S.prompt(p), 11)
    assert row["answer_text"] == str(row["answer"])
    assert row["correct"] is True
    assert row["question"] == S.prompt(p, row["style"])
  # One id per problem, shared by its styles.
  ids = [r["id"] for r in rows]
  assert len(set(ids)) == 200
  assert all(ids.count(i) == len(STYLES) for i in set(ids[:10]))


def test_default_sequences_fit_the_cpu_budget():
  # STUDY.md: keep prompt + solution <= 48 characters at default difficulty.
  for distractors in (0, 1):
    task = S.TaskConfig(distractors=distractors)
    rows = S.make_records(task, "train", 2000, styles=("terse", "postfix"))
    assert max(len(r["question"] + r["solution"]) for r in rows) <= 48


def test_splits_disjoint_deterministic_and_prefix_stable():
  task = S.TaskConfig()
  size = {s: 300 if s == "val" else 500 for s in S.SPLITS}  # val: ~426
  keys = {
      s: [p.key for p in S.sample_problems(task, s, size[s], seed=0)]
      for s in S.SPLITS
  }
  for s in S.SPLITS:
    assert len(set(keys[s])) == size[s]  # distinct within a split
  assert not set(keys["test"]) & set(keys["train"])
  assert not set(keys["test"]) & set(keys["pretrain"])
  for s in ("train", "pretrain", "test"):  # validation is its own bucket
    assert not set(keys["val"]) & set(keys[s])
  again = S.sample_problems(task, "train", 500, seed=0)
  assert [p.key for p in again] == keys["train"]
  short = S.sample_problems(task, "train", 100, seed=0)
  assert [p.key for p in short] == keys["train"][:100]
  other = S.sample_problems(task, "train", 500, seed=1)
  assert [p.key for p in other] != keys["train"]


def test_buckets_partition_a_small_space_exactly():
  task = S.TaskConfig(modulus=5, ops="+", steps=1)  # 25 problems
  everything = {f"5:{a}+{b}" for a, b in itertools.product(range(5), repeat=2)}
  with pytest.raises(ValueError, match=r"only (\d+) distinct") as e:
    S.sample_problems(task, "test", 26, test_fraction=0.5)
  n_test = int(re.search(r"only (\d+)", str(e.value))[1])
  assert 0 < n_test < 25
  kw = dict(test_fraction=0.5, val_fraction=0.3)
  with pytest.raises(ValueError, match=r"only (\d+) distinct") as e:
    S.sample_problems(task, "val", 26, **kw)
  n_val = int(re.search(r"only (\d+)", str(e.value))[1])
  n_train = 25 - n_test - n_val
  assert n_val > 0 and n_train > 0
  test = {p.key for p in S.sample_problems(task, "test", n_test, **kw)}
  val = {p.key for p in S.sample_problems(task, "val", n_val, **kw)}
  train = {p.key for p in S.sample_problems(task, "train", n_train, **kw)}
  assert test | val | train == everything
  assert not test & train and not val & train and not val & test
  with pytest.raises(ValueError, match="ask for fewer"):
    S.sample_problems(task, "train", n_train + 1, **kw)


def test_weak_teacher_traces_grade_as_their_facts_say():
  task = S.TaskConfig(modulus=11, ops="+*", steps=3)
  weak = S.FactTable.gold(11, "+*").perturbed(0.4, seed=1)
  n_steps = n_wrong_steps = n_wrong_answers = 0
  for p in S.sample_problems(task, "train", 300):
    for style in ("terse", "postfix", "verbose", "running"):
      trace = S.noisy_trace(p, style, facts=weak)
      steps = S.solve(p, weak)
      # Independent truth per step: Python arithmetic on the step's operands.
      ok = [
          s.result == eval(f"({s.left}{s.op}{s.right}) % 11")  # noqa: S307
          for s in steps
      ]
      # The trace answers with its own last result, in the right format.
      assert S.answer_of(trace, style) == steps[-1].result
      assert S.step_accuracy(p, trace, style) == pytest.approx(np.mean(ok))
      wrong = steps[-1].result != _evaluate(S.prompt(p), 11)
      assert S.grade(p, trace, style) is not wrong
      if style == "terse":
        n_steps += len(ok)
        n_wrong_steps += len(ok) - sum(ok)
        n_wrong_answers += wrong
  # Facts are hit uniformly, so about 40% of steps use a wrong fact.
  assert 0.33 < n_wrong_steps / n_steps < 0.47
  assert n_wrong_answers > 0


def test_slips():
  task = S.TaskConfig(steps=4)
  problems = S.sample_problems(task, "train", 500)
  rng = np.random.default_rng(0)
  for p in problems[:50]:
    assert S.noisy_trace(p, "terse", slip_prob=0.0, rng=rng) == S.gold_trace(p)
    always = S.noisy_trace(p, "terse", slip_prob=1.0, rng=rng)
    assert S.step_accuracy(p, always, "terse") == 0.0
  wrong = [
      1
      - S.step_accuracy(
          p, S.noisy_trace(p, "terse", slip_prob=0.25, rng=rng), "terse"
      )
      for p in problems
  ]
  assert 0.21 < np.mean(wrong) < 0.29  # 2000 steps, sd ~0.01
  a = S.noisy_trace(
      problems[0], "verbose", slip_prob=0.5, rng=np.random.default_rng(7)
  )
  b = S.noisy_trace(
      problems[0], "verbose", slip_prob=0.5, rng=np.random.default_rng(7)
  )
  assert a == b


def test_styles_are_different_distributions():
  # RSD needs a teacher style a terse student finds unlikely: no two styles
  # share a solution for any problem.
  for p in S.sample_problems(S.TaskConfig(), "test", 50):
    traces = [S.gold_trace(p, s) for s in STYLES]
    assert len(set(traces)) == len(STYLES)


def test_spec_roundtrip_and_errors():
  for p in S.sample_problems(
      S.TaskConfig(ops="+-*", distractors=3), "train", 50
  ):
    assert S.Problem.from_spec(p.spec) == p
  with pytest.raises(ValueError, match="spec '11:9\\*' is malformed"):
    S.Problem.from_spec("11:9*")
  with pytest.raises(ValueError, match="every value in \\[0, 11\\)"):
    S.Problem(11, 12, "+", (1,))


def test_alphabet_covers_every_text():
  task = S.TaskConfig(modulus=23, ops="+-*", steps=3, distractors=2)
  weak = S.FactTable.gold(23, "+-*").perturbed(0.2, seed=0)
  rows = list(S.make_records(task, "train", 100, styles=STYLES, facts=weak))
  rows += list(S.fact_records(weak, 20))
  chars = set("".join(r["question"] + r["solution"] for r in rows))
  assert chars <= set(S.ALPHABET)
  assert len(S.ALPHABET) == len(set(S.ALPHABET))


def test_fact_records():
  gold = S.FactTable.gold(11, "+*")
  rows = list(S.fact_records(gold, 30, per_line=8, seed=2))
  assert rows == list(S.fact_records(gold, 30, per_line=8, seed=2))
  for row in rows:
    facts = row["solution"].split(";")
    assert len(set(facts)) == 8 and row["correct"]
    for fact in facts:
      lhs, rhs = fact.split("=")
      assert eval(f"({lhs}) % 11") == int(rhs)  # noqa: S307
  weak = gold.perturbed(0.5, seed=0)
  for row in S.fact_records(weak, 30):
    truth = all(
        eval(f"({f.split('=')[0]}) % 11") == int(f.split("=")[1])  # noqa: S307
        for f in row["solution"].split(";")
    )
    assert row["correct"] == truth
  with pytest.raises(ValueError, match="per_line=0"):
    next(S.fact_records(gold, 1, per_line=0))


def test_other_errors():
  p = S.Problem(11, 9, "*+", (0, 0))
  with pytest.raises(ValueError, match="Unknown style 'fancy'"):
    S.gold_trace(p, "fancy")
  with pytest.raises(ValueError, match="needs an rng"):
    S.noisy_trace(p, "terse", slip_prob=0.1)
  with pytest.raises(ValueError, match="cannot solve"):
    S.solve(p, S.FactTable.gold(7, "+*"))
  with pytest.raises(ValueError, match="error_rate=1.5"):
    S.FactTable.gold(11, "+").perturbed(1.5, seed=0)
  with pytest.raises(ValueError, match="split='dev'"):
    S.sample_problems(S.TaskConfig(), "dev", 1)
  with pytest.raises(ValueError, match="mode='strict'"):
    S.step_accuracy(p, "A:", "terse", mode="strict")


def test_public_names_stay_importable_from_synthetic():
  # Callers import everything from synthetic; each name must be the very
  # object of the module that now defines it, and listed in __all__.
  moved = {
      synthetic_task: (
          "ALPHABET", "OP_WORDS", "STYLES", "FactTable", "Problem", "Step",
          "TaskConfig", "gold_trace", "noisy_trace", "prompt", "render",
          "solve",
      ),
      synthetic_grading: ("answer_of", "grade", "parse_steps", "step_accuracy"),
  }  # fmt: skip
  for module, names in moved.items():
    for name in names:
      assert getattr(S, name) is getattr(module, name), name
      assert name in S.__all__, name
  assert all(hasattr(S, name) for name in S.__all__)
