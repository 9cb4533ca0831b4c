"""Tests for w2s_jax.evals.extract (docs/methods.md, "Grading" extraction rules)."""

import json

import pytest

from w2s_jax.evals import datasets, equivalence, extract


@pytest.mark.parametrize(
    "text, want",
    [
        (r"so \boxed{\frac{1}{\sqrt{2}}}.", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{1} then \boxed{2}", "2"),  # Last box wins.
        (r"\fbox{7}", "7"),
        (r"\boxed{1} and \fbox{ 8 }", "8"),
        (r"$\boxed 5$", "5"),
        (r"\boxed 12.", "12"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # Escaped braces are literal.
        (r"\boxed{a\\{b}}", r"a\\{b}"),  # \\ is a line break, { groups.
        (r"\boxed {3}", "3"),
        (
            r"\boxed{\left( 3, \frac{\pi}{2} \right)}",
            r"\left( 3, \frac{\pi}{2} \right)",
        ),
    ],
)
def test_extract_boxed(text, want):
  assert extract.extract_boxed(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "no box here",
        r"\boxed{\frac{1}{2}",  # Unbalanced (truncated generation).
        r"\boxed{1} ... \boxed{2",  # The last box is authoritative.
        r"\boxed{}",
        r"\boxed{   }",
        r"\boxedfoo{3}",  # Another macro, not a box.
        r"\boxed",
        r"\boxed.",
    ],
)
def test_extract_boxed_none(text):
  assert extract.extract_boxed(text) is None


@pytest.mark.parametrize(
    "text, want",
    [
        ("there are 1,234 apples and 5 pears", "5"),
        ("the total is 1,234.", "1234"),
        ("loss of -3.5 dollars", "-3.5"),
        ("the pair (1,2)", "2"),  # A comma outside thousands groups splits.
        ("odd 1,2345", "2345"),
        ("minus \u22127", "-7"),
        ("1,000,000 people", "1000000"),
        ("no digits", None),
    ],
)
def test_extract_last_number(text, want):
  assert extract.extract_last_number(text) == want


def test_extract_hash():
  assert extract.extract_hash("work\n#### $1,200\nextra 5") == "1200"
  assert extract.extract_hash("#### 1\n#### 2") == "2"
  assert extract.extract_hash("####   \n") is None
  assert extract.extract_hash("none") is None


@pytest.mark.parametrize(
    "completion, task, answer, rule",
    [
        (r"#### 3 but \boxed{4}", "gsm8k", "4", "boxed"),
        ("7 then\n#### 8\nso 9", "gsm8k", "8", "hash"),
        ("3 + 4 = 7 apples", "gsm8k", "7", "last_number"),
        ("I do not know", "gsm8k", None, "none"),
        (r"answer \boxed{5", "gsm8k", None, "boxed"),  # No fallback to 5.
        (r"\boxed{x^2}", "math", "x^2", "boxed"),
        ("#### 8", "math", None, "none"),  # MATH uses the box only.
        ("so 42", "math", None, "none"),
    ],
)
def test_extract_answer_rules(completion, task, answer, rule):
  assert extract.extract_answer(completion, task) == extract.Extraction(
      answer, rule
  )


def test_strip_think():
  text = r"<think>\boxed{1}</think> final \boxed{2}"
  assert extract.extract_boxed(extract.strip_think(text)) == "2"
  assert (
      extract.extract_boxed(extract.strip_think(r"<think>\boxed{1}</think>"))
      is None
  )
  assert extract.strip_think("plain") == "plain"


def test_bad_input_errors():
  with pytest.raises(TypeError, match="completion must be a str"):
    extract.extract_answer(None)
  with pytest.raises(ValueError, match="task must be one of"):
    extract.extract_answer("x", task="aime")
  with pytest.raises(ValueError, match="no '#### <answer>' line"):
    extract.gsm8k_gold("the answer is 5")
  with pytest.raises(ValueError, match="no gold answer"):
    extract.math_gold("  ", "no box")
  assert extract.math_gold(None, r"so \boxed{\frac{3}{4}}") == r"\frac{3}{4}"
  assert extract.math_gold(" 5 ", r"\boxed{6}") == "5"


def test_long_adversarial_text_is_linear():
  # Deep nesting and many boxes: extraction stays linear and correct.
  text = r"\boxed{" + "{" * 50_000 + "}" * 50_000 + "}" + r" \boxed{" * 1000
  assert extract.extract_boxed(text) is None
  deep = r"\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}"
  assert extract.extract_boxed(deep) == "{" * 50_000 + "1" + "}" * 50_000


def _raw_rows(name):
  path = datasets.raw_data_dir().joinpath(*name.split("/"))
  with path.open("r", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("split", ["test", "train"])
def test_every_gsm8k_reference_solution_extracts_to_its_gold(split):
  rows = _raw_rows(f"gsm8k/{split}.jsonl")
  assert len(rows) == {"test": 1319, "train": 7473}[split]
  for row in rows:
    solution = row["answer"]
    # Independent gold: the integer after the final "####".
    gold = int(solution.split("####")[-1].strip().replace(",", ""))
    got = extract.extract_answer(solution, "gsm8k")
    assert got.rule == "hash"
    assert int(got.answer) == gold, solution


def test_every_math500_solution_box_matches_its_answer_field():
  rows = _raw_rows("math500/test.jsonl")
  assert len(rows) == 500
  for row in rows:
    got = extract.extract_answer(row["solution"], "math")
    assert got.rule == "boxed" and got.answer is not None, row["unique_id"]
    # The fast (string-normalisation) path alone accepts all 500; the full
    # Math-Verify sweep is in equivalence_test.py.
    assert equivalence.strings_equal(got.answer, row["answer"]), row
