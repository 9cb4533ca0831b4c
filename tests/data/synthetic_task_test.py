"""Tests for w2s_jax.data.synthetic_task: renderings, fact tables, config.

Golden strings and Python's own integer arithmetic are the references, never
the module's own solver.
"""

import itertools

import numpy as np
import pytest

from w2s_jax.data import synthetic_task as T


def test_golden_renderings():
  p = T.Problem(11, 9, "*+", (0, 0))
  assert T.prompt(p) == "Q:9*0+0?"
  assert T.gold_trace(p, "terse") == "A:9*0=0;0+0=0#0"
  assert T.gold_trace(p, "postfix") == "A:9 0*=0;0 0+=0#0"
  assert T.gold_trace(p, "verbose") == "A:9 times 0 is 0, 0 plus 0 is 0, so 0"
  assert T.gold_trace(p, "running") == "A:0;0#0"
  # The latent pretraining format of ../shared/STUDY.md, character for
  # character.
  assert T.prompt(p, "latent") + T.gold_trace(p, "latent") == (
      "c:9*0+0.9*0=0,0+0=0 a0"
  )
  q = T.Problem(11, 10, "*-", (10, 3), distractors=((4, "+", 2),))
  assert T.prompt(q) == "Q:4+2;10*10-3?"
  assert T.gold_trace(q, "terse") == "A:10*10=1;1-3=9#9"
  assert T.prompt(q, "latent") == "c:4+2;10*10-3."


def test_gold_fact_table_is_modular_arithmetic():
  t = T.FactTable.gold(7, "+-*")
  for (o, op), a, b in itertools.product(enumerate("+-*"), range(7), range(7)):
    assert t.table_OMM[o, a, b] == eval(f"({a}{op}{b}) % 7")  # noqa: S307
  assert t.num_facts == 3 * 49 and t.num_wrong() == 0


def test_perturbed_table_is_systematic():
  gold = T.FactTable.gold(11, "+*")
  weak = gold.perturbed(0.3, seed=5)
  assert weak.num_wrong() == round(0.3 * 242)
  diff = weak.table_OMM != gold.table_OMM
  assert np.all(weak.table_OMM[diff] != gold.table_OMM[diff])
  assert np.all((0 <= weak.table_OMM) & (weak.table_OMM < 11))
  np.testing.assert_array_equal(
      weak.table_OMM, gold.perturbed(0.3, seed=5).table_OMM
  )
  assert (gold.perturbed(0.3, seed=6).table_OMM != weak.table_OMM).any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(modulus=1), "modulus=1"),
        (dict(ops="/"), "ops='/'"),
        (dict(ops="++"), "ops='\\+\\+'"),
        (dict(steps=0), "steps=0"),
        (dict(distractors=-1), "distractors=-1"),
    ],
)
def test_task_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    T.TaskConfig(**kwargs)
