"""Tests for w2s_jax.data.synthetic_grading: graders checked by hand."""

import pytest

from w2s_jax.data import synthetic_grading as G
from w2s_jax.data import synthetic_task as T


@pytest.mark.parametrize(
    "style,completion,answer,local,chain",
    [
        ("terse", "A:9*0=0;0+0=0#0", 0, 1.0, 1.0),
        ("terse", "A:9*0=1;1+0=1#1", 1, 0.5, 0.0),  # slip, then honest
        ("terse", "A:9*0=0;0+1=1#1", 1, 0.5, 0.5),  # operand miscopied
        ("terse", "A:9*0=0;5+0=5#5", 5, 0.5, 0.5),  # previous result miscopied
        ("terse", "A:9*0=0;0*0=0#0", 0, 0.5, 1.0),  # wrong operator
        ("terse", "A:9*0=0", None, 0.5, 0.5),  # truncated
        ("terse", "A:9*0=0;0+0=0#0#5A:1", 0, 1.0, 1.0),  # first answer wins
        ("terse", "A:9*0=0;0+0=12#12", 12, 0.5, 0.5),  # out of range
        ("terse", "A:9*0=x;0+0=0#0", 0, 0.5, 0.5),  # unreadable step
        ("terse", "blah", None, 0.0, 0.0),
        ("terse", "", None, 0.0, 0.0),
        ("postfix", "A:9 0*=0;0 0+=1#1", 1, 0.5, 0.5),
        ("verbose", "A:9 times 0 is 3, 3 plus 0 is 3, so 3", 3, 0.5, 0.0),
        ("verbose", "A:9 times 0 is 0, 0 minus 0 is 0, so 0", 0, 0.5, 1.0),
        ("running", "A:1;1#1", 1, 0.5, 0.0),
        ("running", "A:0;0#0", 0, 1.0, 1.0),
        ("latent", "c:9*0+0.9*0=0,0+0=0 a0", 0, 1.0, 1.0),
        ("latent", "9*0=0,0+0=4 a4", 4, 0.5, 0.5),
    ],
)
def test_grader_by_hand(style, completion, answer, local, chain):
  p = T.Problem(11, 9, "*+", (0, 0))
  assert G.answer_of(completion, style) == answer
  assert G.grade(p, completion, style) == (answer == 0)
  assert G.step_accuracy(p, completion, style) == local
  assert G.step_accuracy(p, completion, style, mode="chain") == chain
  if completion.startswith("A:"):  # the prompt in front changes nothing
    text = T.prompt(p, style) + completion
    assert G.answer_of(text, style) == answer
    assert G.step_accuracy(p, text, style) == local


# One problem (9*0+0 = 0), its answer in every notation the task defines.
ANY_NOTATION = [
    # (completion, asked style, answer in any notation, format of the asked)
    ("A:9*0=0;0+0=0#0", "terse", 0, True),
    ("9*0=0,0+0=0 a0", "terse", 0, False),  # the latent student's answer
    ("Q:9*0+0?9*0=0,0+0=0 a0", "terse", 0, False),  # prompt in front
    ("A:9 0*=0;0 0+=0#0", "terse", 0, False),  # postfix, asked terse
    ("A:9 0*=0;0 0+=0#0", "postfix", 0, True),
    ("A:9 times 0 is 0, 0 plus 0 is 0, so 0", "terse", 0, False),
    ("A:9 times 0 is 0, 0 plus 0 is 0, so 0", "verbose", 0, True),
    ("A:0;0#0", "running", 0, True),
    ("c:9*0+0.9*0=0,0+0=0 a0", "latent", 0, True),
    ("10*9=2,2*2=4 a4", "terse", 4, False),  # wrong, in latent notation
    ("A:9*0=0;0+0=0#0;0+0", "terse", 0, False),  # runs on past its answer
    ("A:9*0=0;0+0=0#", "terse", None, False),  # no number
    ("A:9*0=0#0", "terse", 0, True),  # format holds; step count not asked
    ("A:9*0=0;0+0=0 a3#0", "terse", 3, False),  # earliest marker wins
    ("", "terse", None, False),
]


@pytest.mark.parametrize("completion,style,answer,fmt", ANY_NOTATION)
def test_any_notation_grading_and_format_by_hand(
    completion, style, answer, fmt
):
  p = T.Problem(11, 9, "*+", (0, 0))
  assert G.answer_any(completion) == answer
  assert G.grade(p, completion, style, notation="any") == (answer == 0)
  assert G.correct_any(completion, p.spec) == float(answer == 0)
  assert G.format_ok(completion, style) == fmt
  if fmt:  # a format-compliant completion grades the same either way
    assert G.grade(p, completion, style) == G.grade(p, completion, style, "any")


def test_format_ok_counts_steps_and_strict_grader_ignores_other_markers():
  p = T.Problem(11, 9, "*+", (0, 0))
  assert G.format_ok("A:9*0=0;0+0=0#0", "terse", num_steps=2)
  assert not G.format_ok("A:9*0=0#0", "terse", num_steps=2)
  # The terse grader does not read the latent answer; any-notation does.
  assert not G.grade(p, "9*0=0,0+0=0 a0", "terse")
  assert G.grade(p, "9*0=0,0+0=0 a0", "terse", notation="any")
  assert G.best_step_accuracy(p, "9*0=0,0+0=0 a0") == 1.0
  with pytest.raises(ValueError, match="notation='loose'"):
    G.grade(p, "A:9*0=0;0+0=0#0", "terse", notation="loose")
