"""Jobs ``sample`` and ``rsd``: graded, filtered traces (and pairs).

Traces of a teacher (plain sampling, W2SR) or of reverse speculative
decoding -> ``traces.jsonl``; with ``sample.pairs``, ``pairs.jsonl`` (one
correct/incorrect pair per prompt) for REDI, DPO and SimPO. The sampling
loop itself is ``jobs.sample_traces``.
"""

from __future__ import annotations

import os
from typing import Any

from w2s_jax.data import formatting, traces
from w2s_jax.jobs import common
from w2s_jax.training import inputs, pairing, trainer


def synthetic_grader(style: str, notation: str = "strict"):
  """``notation='any'`` accepts an answer in any style of the task."""
  from w2s_jax.data import synthetic  # noqa: PLC0415

  def grade(text: str, problem: dict[str, Any]) -> tuple[bool, str | None]:
    p = synthetic.Problem.from_spec(problem["spec"])
    if notation == "any":
      answer = synthetic.answer_any(text)
    else:
      answer = synthetic.answer_of(text, style)
    return synthetic.grade(p, text, style, notation), (
        None if answer is None else str(answer)
    )

  return grade


def trace_config(s: Any, seed: int, rsd: bool) -> Any:
  """A ``TraceConfig`` from the ``sample`` section."""
  from w2s_jax.decoding import rsd_rule  # noqa: PLC0415
  from w2s_jax.jobs import sample_traces as trace_job  # noqa: PLC0415

  task = common.task_name(str(s.dataset))
  return trace_job.TraceConfig(
      num_samples=int(s.num_samples),
      mode="rsd" if rsd else "plain",
      max_new_tokens=int(s.max_new_tokens),
      batch_size=int(s.batch_size),
      seed=seed,
      temperature=float(s.temperature),
      top_p=float(s.top_p),
      rsd=rsd_rule.RSDParams(
          threshold=float(s.rsd_threshold),
          num_proposals=int(s.rsd_num_proposals),
          top_k=int(s.rsd_top_k),
          teacher_temperature=float(s.temperature),
          teacher_top_p=float(s.top_p),
          student_temperature=float(s.temperature),
          student_top_p=float(s.top_p),
      ),
      task="math" if task == "synthetic" else task,
      require_correct=bool(s.require_correct),
      max_fallback_rate=float(s.max_fallback_rate) if rsd else None,
      keep=str(s.keep),
  )


def run_sample(config: Any, workdir: str, rsd: bool) -> dict[str, float]:
  """Teacher traces (W2SR) or RSD traces, graded and filtered, as JSONL."""
  from w2s_jax.jobs import sample_traces as trace_job  # noqa: PLC0415

  s = config.sample
  tok = inputs.load_tokenizer(config.data.tokenizer, workdir)
  fmt = formatting.get_format(str(config.data.prompt_format))
  roles = ("teacher", "student") if rsd else ("teacher",)
  pairing.check_tokenizers(config, tok, roles, workdir)
  models = {r: trainer.build_model(config[r], tok) for r in roles}
  widths = {r: m.cfg.vocab_size for r, m in models.items()}
  models["vocab_size"] = pairing.shared_vocab(config, tok, widths)
  if str(s.dataset) == "synthetic":
    models["grader"] = synthetic_grader(
        str(s.get("style", "terse")), str(s.get("notation", "strict"))
    )
  os.makedirs(workdir, exist_ok=True)
  summary = trace_job.run_trace_job(
      common.problems(s),
      tok,
      trace_config(s, int(config.seed), rsd),
      os.path.join(workdir, "traces.jsonl"),
      prompt_fn=lambda p: formatting.encode_prompt(tok, p["question"], fmt),
      **models,
  )
  if s.get("pairs", False):
    records = traces.read_sft(os.path.join(workdir, "traces.jsonl")).records
    pairs = make_pairs(records)
    traces.write_preferences(os.path.join(workdir, "pairs.jsonl"), pairs)
    summary["pairs"] = float(len(pairs))
  print(summary)
  return summary


def make_pairs(
    records: list[traces.SFTRecord],
) -> list[traces.PreferenceRecord]:
  """One (correct, incorrect) pair per prompt that has both (REDI's rule)."""
  by_prompt: dict[str, dict[bool, str]] = {}
  for r in records:
    if r.correct is None:
      continue
    by_prompt.setdefault(r.prompt, {}).setdefault(bool(r.correct), r.completion)
  return [
      traces.PreferenceRecord(prompt=p, chosen=d[True], rejected=d[False])
      for p, d in by_prompt.items()
      if True in d and False in d
  ]


def run_plain(config: Any, workdir: str) -> dict[str, float]:
  """Job ``sample``: a teacher's traces."""
  return run_sample(config, workdir, rsd=False)


def run_rsd(config: Any, workdir: str) -> dict[str, float]:
  """Job ``rsd``: traces of reverse speculative decoding."""
  return run_sample(config, workdir, rsd=True)
