"""Job ``ssb_data``: semantic soft bootstrapping data (docs/methods.md, "SSB").

Base-model rollouts, hint selection, hinted replies -> ``ssb.jsonl`` and
the teacher's top-k rows aligned to the student's reply tokens.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from w2s_jax.data import formatting, topk_cache, traces
from w2s_jax.jobs import common
from w2s_jax.jobs.sampling import synthetic_grader
from w2s_jax.jobs.topk_scoring import (
    cache_header,
    make_topk_scorer,
    score_sequences,
)
from w2s_jax.training import inputs, trainer


def _ssb_rollouts(traces_list, num_problems: int) -> list[list[Any]]:
  from w2s_jax.data import ssb_hints  # noqa: PLC0415

  groups: list[list[Any]] = [[] for _ in range(num_problems)]
  for t in traces_list:
    groups[t.problem_index].append(
        ssb_hints.Rollout(t.completion, t.answer, bool(t.correct))
    )
  return groups


def _check_ssb_config(s: Any) -> None:
  """Fails at job start on settings that cannot produce SSB data."""
  from w2s_jax.data import ssb_hints  # noqa: PLC0415

  checks = [
      ("num_rollouts", int(s.num_rollouts) >= 2, ">= 2 (a right and a wrong)"),
      ("rollout_temperature", float(s.rollout_temperature) > 0, "> 0"),
      ("hint_temperature", float(s.hint_temperature) > 0, "> 0"),
      ("max_new_tokens", int(s.max_new_tokens) > 0, "> 0"),
      (
          "hint_style",
          str(s.hint_style) in ssb_hints.HINT_STYLES,
          str(ssb_hints.HINT_STYLES),
      ),
  ]
  for key, ok, what in checks:
    if not ok:
      raise ValueError(
          f"config value ssb.{key}={s[key]!r} is invalid: it must be {what};"
          f" fix it with --config.ssb.{key}=..."
      )


def run_ssb_data(config: Any, workdir: str) -> dict[str, float]:
  """SSB data (docs/methods.md, "SSB"): rollouts, hints, hinted replies, teacher rows.

  The teacher is the frozen base model (``config.teacher``), sampled
  through the jitted sampler. Writes ``workdir/ssb.jsonl`` (SFT rows:
  student prompt, reply, plus the hinted prompt and the hint answers) and
  ``workdir/topk.array_record``: the teacher's top-k at
  ``cache.temperature`` on ``hinted prompt || reply``, aligned to the
  student's ``prompt || reply`` tokens (``ssb_hints.align_teacher_rows``).
  """
  from w2s_jax.data import ssb_hints  # noqa: PLC0415
  from w2s_jax.jobs import sample_traces as trace_job  # noqa: PLC0415

  s, c = config.ssb, config.cache
  _check_ssb_config(s)
  tok = inputs.load_tokenizer(config.data.tokenizer, workdir)
  student_fmt = formatting.get_format(str(config.data.prompt_format))
  teacher_fmt = formatting.get_format(str(s.teacher_format))
  teacher = trainer.build_model(config.teacher, tok)
  problems = common.problems(s)
  synthetic_task = str(s.dataset) == "synthetic"
  grader = (
      synthetic_grader(str(s.get("style", "terse")))
      if synthetic_task
      else trace_job.answer_grader(common.task_name(str(s.dataset)))
  )

  def trace_cfg(n, temperature, top_k, seed):
    return trace_job.TraceConfig(
        num_samples=n,
        max_new_tokens=int(s.max_new_tokens),
        batch_size=int(s.batch_size),
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=1.0,
        require_correct=False,
        max_fallback_rate=None,
        keep="all",
    )

  # 1. K rollouts per problem from the plain question.
  rollouts = trace_job.sample_traces(
      problems,
      tok,
      trace_cfg(
          int(s.num_rollouts),
          float(s.rollout_temperature),
          # top-k 50 of the paper; a smaller vocabulary keeps all ids.
          min(int(s.rollout_top_k), tok.vocab_size),
          int(config.seed),
      ),
      model=teacher,
      grader=grader,
      prompt_fn=lambda p: formatting.encode_prompt(
          tok, p["question"], teacher_fmt
      ),
  )
  # 2. Keep mixed problems; hint pair with the majority wrong answer.
  rng = np.random.default_rng(int(config.seed))
  hinted = []
  for prob, group in zip(problems, _ssb_rollouts(rollouts, len(problems))):
    pair = ssb_hints.select_hints(group, rng)
    if pair is not None:
      text = ssb_hints.hinted_prompt(prob["question"], pair, str(s.hint_style))
      hinted.append({**prob, "hinted": text, "pair": pair})
  stats = {
      "problems": float(len(problems)),
      "mixed": float(len(hinted)),
      "rollout_accuracy": float(np.mean([t.correct for t in rollouts])),
  }
  # 3. One hinted reply per kept problem at T 0.4; keep it if correct.
  replies = []
  if hinted:
    replies = trace_job.sample_traces(
        hinted,
        tok,
        trace_cfg(1, float(s.hint_temperature), 0, int(config.seed) + 1),
        model=teacher,
        grader=grader,
        prompt_fn=lambda p: formatting.encode_prompt(
            tok, p["hinted"], teacher_fmt
        ),
    )
  kept = [(hinted[t.problem_index], t) for t in replies if t.correct]
  stats["kept"] = float(len(kept))
  if not kept:
    raise ValueError(
        f"SSB kept no problem ({len(hinted)} of {len(problems)} had mixed"
        " rollouts, none of their hinted replies was correct); raise"
        " ssb.num_problems or ssb.num_rollouts, or use a stronger base"
        " model."
    )
  # 4. Student rows and the teacher's top-k on hinted prompt || reply.
  system = str(s.get("system", ""))
  records, examples, teacher_seqs, hint_lens = [], [], [], []
  for prob, t in kept:
    prompt = ssb_hints.student_prompt(prob["question"], system)
    ex = formatting.build_example(tok, prompt, t.completion, student_fmt)
    hint_ids = formatting.encode_prompt(tok, prob["hinted"], teacher_fmt)
    examples.append(ex)
    teacher_seqs.append(np.concatenate([hint_ids, ex["completion_ids"]]))
    hint_lens.append(len(hint_ids))
    records.append(
        traces.SFTRecord(
            prompt=prompt,
            completion=t.completion,
            correct=True,
            extra={
                "hinted_prompt": prob["hinted"],
                "hint_wrong_answer": prob["pair"].wrong_answer,
                "rollouts_correct": prob["pair"].num_correct,
            },
        )
    )
  os.makedirs(workdir, exist_ok=True)
  traces.write_sft(os.path.join(workdir, "ssb.jsonl"), records)
  header = cache_header(c, tok)
  scorer = make_topk_scorer(
      teacher, header.k, header.temperature, tok.vocab_size
  )
  width = max(map(len, teacher_seqs))
  scored = score_sequences(scorer, teacher_seqs, int(c.batch_size), width)
  path = os.path.join(workdir, "topk.array_record")
  with topk_cache.TopKCacheWriter(path, header) as writer:
    for ex, p_h, (t_ids, t_lp) in zip(examples, hint_lens, scored):
      p_s, r = len(ex["prompt_ids"]), len(ex["completion_ids"])
      ids, lps = ssb_hints.align_teacher_rows(t_ids, t_lp, p_h, p_s, r)
      writer.write(
          inputs.example_ids(ex, p_s + r),
          ids,
          lps,
          prompt_length=p_s,
          temperature=header.temperature,
      )
  print(stats)
  return stats
