"""The trace job: k samples per problem, graded, filtered, written as JSONL.

Used for W2SR (weak-teacher traces, docs/methods.md, "W2SR"), RSD traces (docs/methods.md, "RSD") and any
"sample, grade, keep" data generation. Three steps, each usable alone:

1. ``sample_traces``: batches of problems through ``generate`` (plain) or
   ``rsd_generate`` (RSD), ``num_samples`` per problem, with a progress bar;
   each trace is decoded and graded.
2. ``filter_traces``: RSD fallback rate <= ``max_fallback_rate``, correct,
   finished on EOS, the ``</think>`` format of the RSD paper's filter, then
   ``keep='shortest'`` (one trace per problem, fewest tokens) or ``'all'``.
3. ``write_traces``: JSONL through ``data.traces.write_sft`` (atomic: temp
   file, fsync, rename), one row per trace with prompt, completion, token
   ids, provenance, correct and fallback rate; ``data.traces.read_sft``
   reads it back.

Grading uses the project's checker, ``evals.extract.extract_answer`` and the
in-process fast path ``evals.equivalence.strings_equal``; pass ``grader`` to
use another (e.g. the Math-Verify worker pool).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging

from w2s_jax.data import traces as traces_io
from w2s_jax.decoding import generation as generate_lib
from w2s_jax.decoding import rsd_rule

MODES = ("plain", "rsd")
KEEP = ("shortest", "all")
THINK_CLOSE = "</think>"

Grader = Callable[[str, Mapping[str, Any]], tuple[bool, str | None]]


@dataclasses.dataclass(frozen=True)
class TraceConfig:
  """What to sample and what to keep.

  Attributes:
    num_samples: k traces per problem.
    mode: 'plain' (one model) or 'rsd' (teacher + student).
    max_new_tokens: per trace.
    batch_size: problems per sampler call (rows = batch_size * num_samples).
    seed: batch i draws with ``fold_in(key(seed), i)``.
    temperature: plain sampling temperature (0 = greedy).
    top_k: plain sampling top-k (0 = off).
    top_p: plain sampling top-p.
    min_p: plain sampling min-p.
    rsd: the RSD rule (mode 'rsd').
    task: answer extraction rule, 'gsm8k' or 'math'.
    require_correct: drop incorrect traces (False for W2SR, True for W2SR-P
      and RSD).
    max_fallback_rate: drop RSD traces with a larger fallback rate (None =
      no limit; ignored in plain mode).
    require_eos: drop traces that did not end on an EOS id.
    require_think: drop traces without exactly one ``</think>`` followed by
      a ``\\boxed{}`` (the RSD paper's format filter).
    keep: 'shortest' (one trace per problem) or 'all'.
    eos_ids: ids that end a trace; default the tokenizer's ``eos_ids``.
    show_progress: draw a tqdm bar.
  """

  num_samples: int = 16
  mode: str = "plain"
  max_new_tokens: int = 1024
  batch_size: int = 8
  seed: int = 0
  temperature: float = 0.7
  top_k: int = 0
  top_p: float = 0.95
  min_p: float = 0.0
  rsd: rsd_rule.RSDParams = rsd_rule.RSDParams()
  task: str = "math"
  require_correct: bool = True
  max_fallback_rate: float | None = 0.5
  require_eos: bool = False
  require_think: bool = False
  keep: str = "shortest"
  eos_ids: tuple[int, ...] | None = None
  show_progress: bool = True

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
    if self.keep not in KEEP:
      raise ValueError(f"keep must be one of {KEEP}, got {self.keep!r}.")
    for name in ("num_samples", "max_new_tokens", "batch_size"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    rate = self.max_fallback_rate
    if rate is not None and not 0.0 <= rate <= 1.0:
      raise ValueError(
          f"max_fallback_rate must be in [0, 1] or None, got {rate}."
      )


@dataclasses.dataclass(frozen=True)
class Trace:
  """One graded sample.

  Attributes:
    problem_index: position of the problem in the input.
    sample_index: 0..k-1 within the problem.
    prompt: the problem's prompt text.
    completion: decoded new tokens, without the ending EOS/stop token.
    token_ids: every emitted id (the ending token included).
    finish_reason: 'eos', 'stop' or 'length'.
    correct: the grade.
    answer: the extracted answer (None if none).
    provenance: per token, 1 = teacher proposal accepted, 0 = student
      (RSD only; None in plain mode).
    fallback_rate: share of student tokens (RSD only).
    problem_id: the problem's 'id' field, if any.
  """

  problem_index: int
  sample_index: int
  prompt: str
  completion: str
  token_ids: list[int]
  finish_reason: str
  correct: bool
  answer: str | None
  provenance: list[int] | None = None
  fallback_rate: float | None = None
  problem_id: Any = None


def answer_grader(task: str = "math") -> Grader:
  """Grades a completion against ``problem['answer']`` (docs/methods.md, "Grading").

  Extraction by ``evals.extract.extract_answer``, comparison by the
  normalised-string / exact-rational fast path ``strings_equal``.
  """
  from w2s_jax.evals import equivalence, extract  # noqa: PLC0415

  if task not in extract.TASKS:
    raise ValueError(f"task must be one of {extract.TASKS}, got {task!r}.")

  def grade(completion: str, problem: Mapping[str, Any]) -> tuple[bool, Any]:
    answer = extract.extract_answer(completion, task).answer
    if answer is None:
      return False, None
    return equivalence.strings_equal(answer, str(problem["answer"])), answer

  return grade


def _prompt_text(problem: Mapping[str, Any]) -> Any:
  # The project's datasets say 'question'; 'prompt' wins when both exist.
  return problem.get("prompt", problem.get("question"))


def _check_problems(problems: Sequence[Mapping[str, Any]]) -> None:
  if not problems:
    raise ValueError("problems is empty; pass at least one problem.")
  for i, p in enumerate(problems):
    if not isinstance(p, Mapping):
      raise ValueError(f"problem {i} is a {type(p).__name__}, not a mapping.")
    text = _prompt_text(p)
    if not isinstance(text, str) or not text.strip():
      raise ValueError(
          f"problem {i} needs a non-empty 'prompt' (or 'question') string,"
          " the text stored with each trace."
      )
    if "answer" not in p:
      raise ValueError(
          f"problem {i} has no 'answer'; the trace job grades every sample."
      )


def _prompt_ids(problem, tokenizer, prompt_fn) -> list[int]:
  # prompt_fn or 'prompt_ids' apply a chat template; else the raw text.
  if prompt_fn is not None:
    return [int(i) for i in prompt_fn(problem)]
  if "prompt_ids" in problem:
    return [int(i) for i in problem["prompt_ids"]]
  return list(tokenizer.encode(_prompt_text(problem)))


def sample_traces(
    problems: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    config: TraceConfig,
    *,
    model: Any = None,
    teacher: Any = None,
    student: Any = None,
    grader: Grader | None = None,
    vocab_size: int | None = None,
    teacher_tokenizer: Any = None,
    prompt_fn: Callable[[Mapping[str, Any]], Sequence[int]] | None = None,
) -> list[Trace]:
  """Samples and grades ``config.num_samples`` traces per problem.

  Args:
    problems: mappings with 'prompt' or 'question' (text), 'answer'
      (gold), optionally 'prompt_ids' (already templated ids) and 'id'.
    tokenizer: encodes prompts and decodes traces (the student's for RSD);
      needs ``encode(str)``, ``decode(ids)``, and ``eos_ids`` unless
      ``config.eos_ids`` is set.
    config: the job settings.
    model: the sampled model (mode 'plain'; a lone ``teacher=`` is taken as
      the model, as W2SR samples its weak teacher).
    teacher: the proposing model (mode 'rsd').
    student: the filtering model (mode 'rsd').
    grader: ``(completion, problem) -> (correct, answer)``; default
      ``answer_grader(config.task)``.
    vocab_size: shared vocabulary (padded embeddings); default: the
      tokenizer's ``vocab_size`` if it has one.
    teacher_tokenizer: for RSD, checked against ``tokenizer``.
    prompt_fn: problem -> prompt ids (e.g. ``formatting.encode_prompt`` with
      a chat template); default: 'prompt_ids', else the encoded text.

  Returns:
    All traces, problem-major.
  """
  _check_problems(problems)
  if config.mode == "plain" and model is None and student is None:
    model, teacher = teacher, None
  if config.mode == "plain" and (model is None or teacher or student):
    raise ValueError(
        "mode 'plain' samples one model: pass model= (or teacher= alone)."
    )
  if config.mode == "rsd" and (model is not None or not (teacher and student)):
    raise ValueError("mode 'rsd' needs teacher= and student= (no model=).")
  grader = grader or answer_grader(config.task)
  eos_ids = config.eos_ids
  if eos_ids is None:
    eos_ids = tuple(getattr(tokenizer, "eos_ids", ()))
    if not eos_ids:
      raise ValueError(
          "no EOS ids: set TraceConfig.eos_ids or use a tokenizer with"
          " eos_ids, else every trace runs to max_new_tokens."
      )
  vocab_size = vocab_size or getattr(tokenizer, "vocab_size", None)
  end_ids = set(eos_ids)
  key = jax.random.key(config.seed)
  out: list[Trace] = []
  bar = tqdm.tqdm(
      total=len(problems),
      desc=f"traces ({config.mode})",
      unit="problem",
      disable=not config.show_progress,
  )
  with bar:
    for batch_index, start in enumerate(
        range(0, len(problems), config.batch_size)
    ):
      batch = problems[start : start + config.batch_size]
      prompts = [_prompt_ids(p, tokenizer, prompt_fn) for p in batch]
      rng = jax.random.fold_in(key, batch_index)
      common = dict(
          max_new_tokens=config.max_new_tokens,
          n=config.num_samples,
          rng=rng,
          eos_ids=eos_ids,
          vocab_size=vocab_size,
      )
      if config.mode == "plain":
        res = generate_lib.generate(
            model,
            prompts,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            min_p=config.min_p,
            **common,
        )
      else:
        res = generate_lib.rsd_generate(
            teacher,
            student,
            prompts,
            teacher_tokenizer=teacher_tokenizer,
            student_tokenizer=tokenizer if teacher_tokenizer else None,
            **_rsd_kwargs(config.rsd),
            **common,
        )
      for row in range(res.tokens.shape[0]):
        b, j = divmod(row, config.num_samples)
        problem = batch[b]
        ids = res.tokens[row, : res.lengths[row]].tolist()
        text_ids = ids[:-1] if ids and ids[-1] in end_ids else ids
        completion = tokenizer.decode(text_ids)
        correct, answer = grader(completion, problem)
        rsd = config.mode == "rsd"
        out.append(
            Trace(
                problem_index=start + b,
                sample_index=j,
                prompt=_prompt_text(problem),
                completion=completion,
                token_ids=ids,
                finish_reason=str(res.finish_reason[row]),
                correct=bool(correct),
                answer=answer,
                provenance=(
                    res.from_teacher[row, : len(ids)].astype(int).tolist()
                    if rsd
                    else None
                ),
                fallback_rate=float(res.fallback_rate[row]) if rsd else None,
                problem_id=problem.get("id"),
            )
        )
      bar.update(len(batch))
  return out


def _rsd_kwargs(p: rsd_rule.RSDParams) -> dict[str, Any]:
  return {
      f.name: getattr(p, f.name)
      for f in dataclasses.fields(p)
      if f.name != "probe_k"
  }


def _think_format_ok(text: str) -> bool:
  if text.count(THINK_CLOSE) != 1:
    return False
  return "\\boxed" in text.split(THINK_CLOSE, 1)[1]


def filter_traces(traces: Iterable[Trace], config: TraceConfig) -> list[Trace]:
  """Applies the filters of ``config`` and the keep rule.

  Traces with an empty completion are always dropped (nothing to learn).
  With ``keep='shortest'`` each problem keeps its passing trace with the
  fewest tokens (the earliest sample on ties); problems with none are
  dropped.
  """
  passing = []
  for t in traces:
    if not t.completion.strip():
      continue
    if config.require_correct and not t.correct:
      continue
    if (
        config.mode == "rsd"
        and config.max_fallback_rate is not None
        and t.fallback_rate > config.max_fallback_rate
    ):
      continue
    if config.require_eos and t.finish_reason != "eos":
      continue
    if config.require_think and not _think_format_ok(t.completion):
      continue
    passing.append(t)
  if config.keep == "all":
    return passing
  best: dict[int, Trace] = {}
  for t in passing:
    cur = best.get(t.problem_index)
    if cur is None or len(t.token_ids) < len(cur.token_ids):
      best[t.problem_index] = t
  return [best[i] for i in sorted(best)]


def to_record(t: Trace, mode: str) -> traces_io.SFTRecord:
  """The JSONL row of a trace (``data.traces`` SFT schema plus extras)."""
  extra: dict[str, Any] = {
      "problem_index": t.problem_index,
      "sample_index": t.sample_index,
      "token_ids": list(t.token_ids),
      "finish_reason": t.finish_reason,
      "answer": t.answer,
      "mode": mode,
  }
  if t.problem_id is not None:
    extra["id"] = t.problem_id
  if t.provenance is not None:
    extra["provenance"] = list(t.provenance)
    extra["fallback_rate"] = t.fallback_rate
  return traces_io.SFTRecord(
      prompt=t.prompt, completion=t.completion, correct=t.correct, extra=extra
  )


def write_traces(
    path: str | os.PathLike[str], traces: Iterable[Trace], mode: str
) -> None:
  """Writes traces as JSONL atomically (a crash leaves no partial file)."""
  traces_io.write_sft(path, (to_record(t, mode) for t in traces))


def run_trace_job(
    problems: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    config: TraceConfig,
    out_path: str | os.PathLike[str],
    **models: Any,
) -> dict[str, float]:
  """Samples, grades, filters and writes traces; returns summary stats.

  Args:
    problems: as in ``sample_traces``.
    tokenizer: as in ``sample_traces``.
    config: the job settings.
    out_path: the JSONL file (its directory must exist).
    **models: ``model=`` or ``teacher=``/``student=``, plus the optional
      ``grader``, ``vocab_size``, ``teacher_tokenizer`` and ``prompt_fn`` of
      ``sample_traces``.

  Returns:
    Counts and rates: problems, traces, kept, problems_kept, accuracy,
    mean_fallback_rate (RSD), eos_rate.
  """
  out_dir = os.path.dirname(os.path.abspath(os.fspath(out_path)))
  if not os.path.isdir(out_dir):
    raise FileNotFoundError(
        f"output directory {out_dir!r} does not exist; create it before"
        " running the trace job."
    )
  traces = sample_traces(problems, tokenizer, config, **models)
  kept = filter_traces(traces, config)
  write_traces(out_path, kept, config.mode)
  stats = {
      "problems": float(len(problems)),
      "traces": float(len(traces)),
      "kept": float(len(kept)),
      "problems_kept": float(len({t.problem_index for t in kept})),
      "accuracy": float(np.mean([t.correct for t in traces])),
      "eos_rate": float(np.mean([t.finish_reason == "eos" for t in traces])),
  }
  if config.mode == "rsd":
    stats["mean_fallback_rate"] = float(
        np.mean([t.fallback_rate for t in traces])
    )
  logging.info("trace job %s -> %s: %s", config.mode, out_path, stats)
  return stats
