"""Trace job: sampling, grading, filtering and the JSONL it writes."""

import os

import numpy as np
import pytest

from w2s_jax import models
from w2s_jax.data import char_vocab, tokenizers
from w2s_jax.data import traces as traces_io
from w2s_jax.decoding import rsd_rule
from w2s_jax.jobs import sample_traces as traces

ALPHABET = "0123456789 #abx"
PROBLEMS = [
    {"prompt": "a 12 #", "answer": "1", "id": "p0"},
    {"prompt": "b 7 x 3", "answer": "2", "id": "p1"},
    {"prompt": "x", "answer": "3", "id": "p2"},
    {"prompt": "ab 45 #", "answer": "4", "id": "p3"},
]


@pytest.fixture(scope="module")
def tok():
  backend = char_vocab.build_char_tokenizer(ALPHABET)
  return tokenizers.Tokenizer.create(
      backend,
      special_tokens={
          "pad_token": char_vocab.PAD,
          "bos_token": char_vocab.BOS,
          "eos_token": char_vocab.EOS,
          "unk_token": char_vocab.UNK,
      },
  )


@pytest.fixture(scope="module")
def pair(tok):
  # Embeddings padded past the tokenizer (19 ids), as Qwen checkpoints are.
  cfg = models.get_config(
      "tiny-qwen2", vocab_size=24, max_len=64, tie_embeddings=False
  )
  return (
      models.init_model(cfg.replace(d_model=96), seed=1),
      models.init_model(cfg, seed=2),
  )


def contains_answer(completion, problem):
  """A test grader: correct iff the gold digit occurs in the completion."""
  return problem["answer"] in completion, None


def _config(**kw):
  base = dict(
      num_samples=4, max_new_tokens=12, batch_size=2, temperature=1.0,
      top_p=1.0, show_progress=False, require_correct=False, keep="all",
  )  # fmt: skip
  base.update(kw)
  return traces.TraceConfig(**base)


@pytest.fixture(scope="module")
def plain_traces(tok, pair):
  return traces.sample_traces(
      PROBLEMS, tok, _config(), model=pair[1], grader=contains_answer
  )


def test_plain_traces_are_decoded_and_graded(tok, plain_traces):
  assert len(plain_traces) == 4 * 4
  assert [(t.problem_index, t.sample_index) for t in plain_traces] == [
      (i, j) for i in range(4) for j in range(4)
  ]
  eos = tok.eos_id
  for t in plain_traces:
    p = PROBLEMS[t.problem_index]
    assert t.prompt == p["prompt"] and t.problem_id == p["id"]
    assert 1 <= len(t.token_ids) <= 12 and max(t.token_ids) < tok.vocab_size
    ended = t.token_ids[-1] == eos
    assert t.finish_reason == ("eos" if ended else "length")
    body = t.token_ids[:-1] if ended else t.token_ids
    assert t.completion == tok.decode(body)
    assert t.correct == (p["answer"] in t.completion)
    assert t.provenance is None and t.fallback_rate is None
  # The grader saw both outcomes, so the filters below are not vacuous.
  assert {t.correct for t in plain_traces} == {True, False}


def test_question_key_prompt_fn_and_teacher_alone(tok, pair, plain_traces):
  # The datasets' {'question', 'answer'} rows, templated by prompt_fn, and
  # the W2SR call shape (the weak teacher sampled alone) give the same
  # traces as pre-tokenised 'prompt' rows (same ids, same seed).
  rows = [
      {"question": p["prompt"][::-1], "answer": p["answer"]} for p in PROBLEMS
  ]
  got = traces.sample_traces(
      rows, tok, _config(), teacher=pair[1], grader=contains_answer,
      prompt_fn=lambda p: tok.encode(p["question"][::-1]),
  )  # fmt: skip
  assert [t.prompt for t in got[::4]] == [r["question"] for r in rows]
  assert [t.token_ids for t in got] == [t.token_ids for t in plain_traces]


def test_keep_shortest_correct_per_problem(plain_traces):
  config = _config(require_correct=True, keep="shortest")
  kept = traces.filter_traces(plain_traces, config)
  want = {}
  for t in plain_traces:  # first minimum wins
    if t.correct and t.completion.strip():
      best = want.get(t.problem_index)
      if best is None or len(t.token_ids) < len(best.token_ids):
        want[t.problem_index] = t
  assert kept == [want[i] for i in sorted(want)]
  keep_all = traces.filter_traces(plain_traces, _config(require_correct=True))
  assert keep_all == [
      t for t in plain_traces if t.correct and t.completion.strip()
  ]


def test_run_trace_job_writes_jsonl_atomically(
    tok, pair, plain_traces, tmp_path
):
  path = tmp_path / "traces.jsonl"
  path.write_text("stale\n")
  config = _config(require_correct=True, keep="shortest", show_progress=True)
  stats = traces.run_trace_job(
      PROBLEMS, tok, config, path, model=pair[1], grader=contains_answer
  )
  kept = traces.filter_traces(plain_traces, config)  # same seed, same traces
  rows = traces_io.read_sft(path).records
  assert len(rows) == len(kept) == stats["kept"]
  for row, t in zip(rows, kept):
    assert (row.prompt, row.completion, row.correct) == (
        t.prompt, t.completion, True,
    )  # fmt: skip
    assert row.extra["token_ids"] == t.token_ids
    assert row.extra["id"] == t.problem_id and row.extra["mode"] == "plain"
    assert "provenance" not in row.extra
  assert stats["traces"] == 16 and stats["problems"] == 4
  assert stats["accuracy"] == np.mean([t.correct for t in plain_traces])
  assert os.listdir(tmp_path) == ["traces.jsonl"]  # no temp files left


def test_rsd_traces_carry_provenance_and_filter_on_fallback(tok, pair):
  teacher, student = pair
  config = _config(
      mode="rsd", num_samples=2, max_fallback_rate=0.5, require_correct=False,
      rsd=rsd_rule.RSDParams(top_k=8),
  )  # fmt: skip
  all_traces = traces.sample_traces(
      PROBLEMS, tok, config, teacher=teacher, student=student,
      grader=contains_answer, teacher_tokenizer=tok,
  )  # fmt: skip
  assert len(all_traces) == 8
  for t in all_traces:
    assert len(t.provenance) == len(t.token_ids)
    assert set(t.provenance) <= {0, 1}
    assert t.fallback_rate == pytest.approx(1 - np.mean(t.provenance))
  kept = traces.filter_traces(all_traces, config)
  assert kept == [
      t for t in all_traces if t.fallback_rate <= 0.5 and t.completion.strip()
  ]
  record = traces.to_record(all_traces[0], "rsd")
  assert record.extra["provenance"] == all_traces[0].provenance
  assert record.extra["fallback_rate"] == all_traces[0].fallback_rate


def _trace(i, j, text, n, correct=True, finish="eos"):
  return traces.Trace(
      problem_index=i, sample_index=j, prompt="q", completion=text,
      token_ids=list(range(n)), finish_reason=finish, correct=correct,
      answer=None,
  )  # fmt: skip


def test_filter_rules_on_hand_built_traces():
  good = "think</think> so \\boxed{3}"
  ts = [
      _trace(0, 0, good, 9),
      _trace(0, 1, good, 5),
      _trace(0, 2, good, 5),  # tie with sample 1: the earlier one is kept
      _trace(1, 0, "no close tag \\boxed{3}", 2),
      _trace(1, 1, "a</think>b</think>\\boxed{1}", 3),
      _trace(1, 2, "\\boxed{1}</think> done", 3),
      _trace(2, 0, good, 4, finish="length"),
      _trace(2, 1, "   ", 1),
      _trace(3, 0, good, 7, correct=False),
  ]
  config = _config(require_think=True, require_eos=True, require_correct=True)
  assert traces.filter_traces(ts, config) == [ts[0], ts[1], ts[2]]
  shortest = traces.filter_traces(ts, _config(keep="shortest"))
  assert [(t.problem_index, t.sample_index) for t in shortest] == [
      (0, 1), (1, 0), (2, 0), (3, 0),
  ]  # fmt: skip


def test_answer_grader_uses_the_project_checker():
  gsm = traces.answer_grader("gsm8k")
  assert gsm("so the total is #### 1,234", {"answer": "1234"}) == (True, "1234")
  assert gsm("I think 12", {"answer": "13"}) == (False, "12")
  assert gsm("no digits here", {"answer": "1"}) == (False, None)
  math = traces.answer_grader("math")
  assert math("\\boxed{1} then \\boxed{\\dfrac{1}{2}}", {"answer": "0.5"})[0]
  assert not math("answer 0.5", {"answer": "0.5"})[0]  # MATH needs a box
  with pytest.raises(ValueError, match="task must be one of"):
    traces.answer_grader("aime")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mode="beam"), "mode must be one of"),
        (dict(keep="longest"), "keep must be one of"),
        (dict(num_samples=0), "num_samples must be >= 1"),
        (dict(max_fallback_rate=1.5), r"max_fallback_rate must be in \[0, 1\]"),
    ],
)
def test_bad_config_raises(kw, match):
  with pytest.raises(ValueError, match=match):
    _config(**kw)


def test_bad_job_input_raises(tok, pair, tmp_path):
  teacher, student = pair
  with pytest.raises(ValueError, match="mode 'plain' samples one model"):
    traces.sample_traces(
        PROBLEMS, tok, _config(), model=student, teacher=teacher
    )
  with pytest.raises(
      ValueError, match="mode 'rsd' needs teacher= and student="
  ):
    traces.sample_traces(PROBLEMS, tok, _config(mode="rsd"), teacher=teacher)
  with pytest.raises(ValueError, match="problems is empty"):
    traces.sample_traces([], tok, _config(), model=student)
  with pytest.raises(ValueError, match="problem 1 has no 'answer'"):
    traces.sample_traces(
        [PROBLEMS[0], {"prompt": "x"}], tok, _config(), model=student
    )
  with pytest.raises(
      ValueError, match=r"needs a non-empty 'prompt' \(or 'question'\)"
  ):
    traces.sample_traces(
        [{"prompt": " ", "answer": "1"}], tok, _config(), model=student
    )
  with pytest.raises(FileNotFoundError, match="does not exist; create it"):
    traces.run_trace_job(
        PROBLEMS,
        tok,
        _config(),
        tmp_path / "missing" / "t.jsonl",
        model=student,
    )
