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
