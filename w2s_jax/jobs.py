"""Non-training jobs of ``w2s_jax.main``: eval, sample, rsd, topk_cache.

Each job takes the locked config and the workdir and writes its outputs
atomically there, with a progress bar:

* ``eval``: a model (HF dir) on the synthetic task, GSM8K or MATH-500 ->
  ``eval/items.jsonl`` + ``eval/summary.json`` (pass@k, maj@k, length).
* ``sample`` / ``rsd``: traces of a teacher (plain sampling) or of reverse
  speculative decoding -> ``traces.jsonl`` (graded, filtered) and, with
  ``sample.pairs``, ``pairs.jsonl`` for REDI/DPO/SimPO.
* ``topk_cache``: a teacher's top-k log-probs on SFT data -> array_record.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tqdm

from w2s_jax.data import formatting, topk_cache, traces
from w2s_jax.evals import datasets, evaluate
from w2s_jax.training import inputs, trainer


def _problems(cfg: Any) -> list[dict[str, Any]]:
  """Evaluation/sampling problems from ``cfg.dataset``."""
  name, n = str(cfg.dataset), int(cfg.get("num_problems", 0))
  if name == "synthetic":
    task = inputs.task_config(cfg)
    split = str(cfg.get("split", "test"))
    return evaluate.synthetic_problems(
        task, n or 200, split=split, seed=int(cfg.get("seed", 0))
    )
  if name == "gsm8k":
    recs = datasets.load_gsm8k(
        str(cfg.get("split", "test")), cfg.get("path") or None
    )
  elif name == "math500":
    recs = datasets.load_math500(cfg.get("path") or None)
  else:
    raise ValueError(
        f"dataset {name!r} is not one of 'synthetic', 'gsm8k', 'math500'."
    )
  rows = list(recs)
  return rows[:n] if n else rows


def _task(dataset: str) -> str:
  return {"synthetic": "synthetic", "gsm8k": "gsm8k", "math500": "math"}[
      dataset
  ]


def _model_and_tokenizer(mcfg: Any, tokenizer_spec: str, workdir: str):
  tokenizer = inputs.load_tokenizer(tokenizer_spec, workdir)
  return trainer.build_model(mcfg, tokenizer), tokenizer


def run_eval(config: Any, workdir: str) -> dict[str, float]:
  e = config.eval
  model, tok = _model_and_tokenizer(
      config.model, config.data.tokenizer, workdir
  )
  problems = _problems(e)
  summary, rows = evaluate.evaluate(
      model,
      tok,
      problems,
      task=_task(str(e.dataset)),
      fmt=formatting.get_format(str(config.data.prompt_format)),
      style=str(e.get("style", "terse")),
      n=int(e.n),
      temperature=float(e.temperature),
      top_p=float(e.top_p),
      max_new_tokens=int(e.max_new_tokens),
      batch_size=int(e.batch_size),
      seed=int(config.seed),
  )
  evaluate.write_results(os.path.join(workdir, "eval"), summary, rows)
  print(summary)
  return summary


def run_topk_cache(config: Any, workdir: str) -> dict[str, float]:
  """Teacher top-k log-probs (at ``cache.temperature``) over SFT examples."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  c = config.cache
  tok = inputs.load_tokenizer(config.data.tokenizer, workdir)
  teacher = trainer.build_model(config.teacher, tok)
  examples = inputs.sft_examples(config.data, tok)
  k, tau = int(c.k), float(c.temperature)
  graphdef, state = nnx.split(teacher)

  @jax.jit
  def topk(state, tokens_1L):
    logits = nnx.merge(graphdef, state)(tokens_1L)[0, :, : tok.vocab_size]
    lp = jax.nn.log_softmax(logits.astype(jnp.float32) / tau, axis=-1)
    vals, ids = jax.lax.top_k(lp, k)
    return ids.astype(jnp.int32), vals

  header = topk_cache.TopKHeader(
      k=k,
      temperature=tau,
      vocab_size=tok.vocab_size,
      tokenizer_fingerprint=tok.fingerprint(),
  )
  path = os.path.join(workdir, "topk.array_record")
  with topk_cache.TopKCacheWriter(path, header) as writer:
    for ex in tqdm.tqdm(examples, desc="topk cache"):
      ids = np.concatenate([ex["prompt_ids"], ex["completion_ids"]]).astype(
          np.int32
      )
      top_ids, top_lp = topk(state, jnp.asarray(ids[None]))
      writer.write(
          ids,
          np.asarray(top_ids),
          np.asarray(top_lp),
          prompt_length=len(ex["prompt_ids"]),
          temperature=tau,
      )
  print(f"wrote {len(examples)} examples to {path}")
  return {"examples": float(len(examples))}


def _synthetic_grader(style: str):
  from w2s_jax.data import synthetic  # noqa: PLC0415

  def grade(text: str, problem: dict[str, Any]) -> tuple[bool, str | None]:
    p = synthetic.Problem.from_spec(problem["spec"])
    answer = synthetic.answer_of(text, style)
    return synthetic.grade(p, text, style), None if answer is None else str(
        answer
    )

  return grade


def trace_config(s: Any, seed: int, rsd: bool) -> Any:
  """A ``TraceConfig`` from the ``sample`` section."""
  from w2s_jax.decoding import rsd_rule  # noqa: PLC0415
  from w2s_jax.decoding import traces as trace_job  # noqa: PLC0415

  task = _task(str(s.dataset))
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
  from w2s_jax.decoding import traces as trace_job  # noqa: PLC0415

  s = config.sample
  tok = inputs.load_tokenizer(config.data.tokenizer, workdir)
  fmt = formatting.get_format(str(config.data.prompt_format))
  models = {"teacher": trainer.build_model(config.teacher, tok)}
  if rsd:
    models["student"] = trainer.build_model(config.student, tok)
  if str(s.dataset) == "synthetic":
    models["grader"] = _synthetic_grader(str(s.get("style", "terse")))
  os.makedirs(workdir, exist_ok=True)
  summary = trace_job.run_trace_job(
      _problems(s),
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


def run(job: str, config: Any, workdir: str):
  if job == "eval":
    return run_eval(config, workdir)
  if job == "topk_cache":
    return run_topk_cache(config, workdir)
  if job in ("sample", "rsd"):
    return run_sample(config, workdir, rsd=job == "rsd")
  raise ValueError(
      f"unknown job {job!r}; jobs: train, eval, sample, rsd, topk_cache."
  )
