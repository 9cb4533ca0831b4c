"""Non-training jobs of ``w2s_jax.main``: eval, sample, rsd, topk_cache, ssb_data.

Each job takes the locked config and the workdir and writes its outputs
atomically there, with a progress bar:

* ``eval``: a model (HF dir) on the synthetic task, GSM8K or MATH-500 ->
  ``eval/items.jsonl`` + ``eval/summary.json`` (pass@k, maj@k, length).
* ``sample`` / ``rsd``: traces of a teacher (plain sampling) or of reverse
  speculative decoding -> ``traces.jsonl`` (graded, filtered) and, with
  ``sample.pairs``, ``pairs.jsonl`` for REDI/DPO/SimPO.
* ``topk_cache``: a teacher's top-k log-probs on SFT data -> array_record.
* ``ssb_data``: semantic soft bootstrapping data (METHODS §8): base-model
  rollouts, hint selection, hinted replies -> ``ssb.jsonl`` and the
  teacher's top-k rows aligned to the student's reply tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tqdm

from w2s_jax.data import formatting, topk_cache, traces
from w2s_jax.evals import datasets, evaluate
from w2s_jax.training import inputs, pairing, trainer


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


def make_topk_scorer(
    model: Any, k: int, temperature: float, vocab_size: int
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """A jitted ``(tokens_BL, lengths_B) -> (ids_BLK, logprobs_BLK)``.

  Row t holds the model's top-k next-token log-probs of
  ``log_softmax(z[:vocab_size] / temperature)`` after ``tokens[: t + 1]``
  (the row of ``logits[:, t]``); rows are right-padded, padding rows are
  garbage. Call it with one fixed ``[B, L]`` shape to compile once.
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  graphdef, state = nnx.split(model)
  if not 1 <= k <= vocab_size:
    raise ValueError(
        f"cache.k={k} must be in [1, vocab_size={vocab_size}]; set"
        " --config.cache.k."
    )

  @jax.jit
  def score(state, tokens_BL, lengths_B):
    length = tokens_BL.shape[1]
    seg = (jnp.arange(length)[None] < lengths_B[:, None]).astype(jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length), tokens_BL.shape) * seg
    logits = nnx.merge(graphdef, state)(tokens_BL, pos, seg)
    lp = jax.nn.log_softmax(
        logits[..., :vocab_size].astype(jnp.float32) / temperature, axis=-1
    )
    vals, ids = jax.lax.top_k(lp, k)
    return ids.astype(jnp.int32), vals

  def run(tokens_BL, lengths_B):
    ids, vals = score(state, jnp.asarray(tokens_BL), jnp.asarray(lengths_B))
    return np.asarray(ids), np.asarray(vals)

  return run


def score_sequences(
    scorer: Callable, seqs: list[np.ndarray], batch_size: int, width: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(ids [n, K], logprobs [n, K])`` per sequence, in order.

  Sequences are right-padded to ``width`` in batches of ``batch_size``
  (the last batch padded with empty rows), so the scorer compiles once.
  """
  for start in range(0, len(seqs), batch_size):
    chunk = seqs[start : start + batch_size]
    tokens = np.zeros((batch_size, width), np.int32)
    lengths = np.zeros(batch_size, np.int32)
    for r, ids in enumerate(chunk):
      if len(ids) > width:
        raise ValueError(
            f"sequence {start + r} has {len(ids)} tokens, more than the"
            f" scoring width {width}; raise data.max_len."
        )
      tokens[r, : len(ids)], lengths[r] = ids, len(ids)
    ids_BLK, lp_BLK = scorer(tokens, lengths)
    for r, ids in enumerate(chunk):
      yield ids_BLK[r, : len(ids)], lp_BLK[r, : len(ids)]


def cache_header(c: Any, tok: Any) -> topk_cache.TopKHeader:
  return topk_cache.TopKHeader(
      k=int(c.k),
      temperature=float(c.temperature),
      vocab_size=tok.vocab_size,
      tokenizer_fingerprint=tok.fingerprint(),
  )


def run_topk_cache(config: Any, workdir: str) -> dict[str, float]:
  """Teacher top-k log-probs (at ``cache.temperature``) over SFT examples.

  Each example is scored as the trainer will see it (prompt || completion
  cut to ``data.max_len``), so ``inputs.TopKBatches`` can check the cache
  against the data token by token. Writes ``workdir/topk.array_record``.
  """
  c = config.cache
  tok = inputs.load_tokenizer(config.data.tokenizer, workdir)
  pairing.check_tokenizers(config, tok, ("teacher",), workdir)
  teacher = trainer.build_model(config.teacher, tok)
  # The scorer slices padded widths to the tokenizer; a narrower teacher is
  # refused here.
  pairing.shared_vocab(config, tok, {"teacher": teacher.cfg.vocab_size})
  examples = inputs.sft_examples(config.data, tok)
  max_len = int(config.data.max_len)
  header = cache_header(c, tok)
  scorer = make_topk_scorer(
      teacher, header.k, header.temperature, tok.vocab_size
  )
  seqs = [inputs.example_ids(ex, max_len) for ex in examples]
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "topk.array_record")
  scored = score_sequences(
      scorer, seqs, int(c.get("batch_size", 8)), max(map(len, seqs))
  )
  with topk_cache.TopKCacheWriter(path, header) as writer:
    for ex, ids, (top_ids, top_lp) in zip(
        examples, seqs, tqdm.tqdm(scored, total=len(seqs), desc="topk cache")
    ):
      writer.write(
          ids,
          top_ids,
          top_lp,
          prompt_length=min(len(ex["prompt_ids"]), len(ids)),
          temperature=header.temperature,
      )
  print(f"wrote {len(examples)} examples to {path}")
  return {"examples": float(len(examples))}


def _ssb_rollouts(traces_list, num_problems: int) -> list[list[Any]]:
  from w2s_jax.data import ssb  # noqa: PLC0415

  groups: list[list[Any]] = [[] for _ in range(num_problems)]
  for t in traces_list:
    groups[t.problem_index].append(
        ssb.Rollout(t.completion, t.answer, bool(t.correct))
    )
  return groups


def _check_ssb_config(s: Any) -> None:
  """Fails at job start on settings that cannot produce SSB data."""
  from w2s_jax.data import ssb  # noqa: PLC0415

  checks = [
      ("num_rollouts", int(s.num_rollouts) >= 2, ">= 2 (a right and a wrong)"),
      ("rollout_temperature", float(s.rollout_temperature) > 0, "> 0"),
      ("hint_temperature", float(s.hint_temperature) > 0, "> 0"),
      ("max_new_tokens", int(s.max_new_tokens) > 0, "> 0"),
      (
          "hint_style",
          str(s.hint_style) in ssb.HINT_STYLES,
          str(ssb.HINT_STYLES),
      ),
  ]
  for key, ok, what in checks:
    if not ok:
      raise ValueError(
          f"config value ssb.{key}={s[key]!r} is invalid: it must be {what};"
          f" fix it with --config.ssb.{key}=..."
      )


def run_ssb_data(config: Any, workdir: str) -> dict[str, float]:
  """SSB data (METHODS §8): rollouts, hints, hinted replies, teacher rows.

  The teacher is the frozen base model (``config.teacher``), sampled
  through the jitted sampler. Writes ``workdir/ssb.jsonl`` (SFT rows:
  student prompt, reply, plus the hinted prompt and the hint answers) and
  ``workdir/topk.array_record``: the teacher's top-k at
  ``cache.temperature`` on ``hinted prompt || reply``, aligned to the
  student's ``prompt || reply`` tokens (``ssb.align_teacher_rows``).
  """
  from w2s_jax.data import ssb  # noqa: PLC0415
  from w2s_jax.decoding import traces as trace_job  # noqa: PLC0415

  s, c = config.ssb, config.cache
  _check_ssb_config(s)
  tok = inputs.load_tokenizer(config.data.tokenizer, workdir)
  student_fmt = formatting.get_format(str(config.data.prompt_format))
  teacher_fmt = formatting.get_format(str(s.teacher_format))
  teacher = trainer.build_model(config.teacher, tok)
  problems = _problems(s)
  synthetic_task = str(s.dataset) == "synthetic"
  grader = (
      _synthetic_grader(str(s.get("style", "terse")))
      if synthetic_task
      else trace_job.answer_grader(_task(str(s.dataset)))
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
    pair = ssb.select_hints(group, rng)
    if pair is not None:
      text = ssb.hinted_prompt(prob["question"], pair, str(s.hint_style))
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
    prompt = ssb.student_prompt(prob["question"], system)
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
      ids, lps = ssb.align_teacher_rows(t_ids, t_lp, p_h, p_s, r)
      writer.write(
          inputs.example_ids(ex, p_s + r),
          ids,
          lps,
          prompt_length=p_s,
          temperature=header.temperature,
      )
  print(stats)
  return stats


def _synthetic_grader(style: str, notation: str = "strict"):
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
  roles = ("teacher", "student") if rsd else ("teacher",)
  pairing.check_tokenizers(config, tok, roles, workdir)
  models = {r: trainer.build_model(config[r], tok) for r in roles}
  widths = {r: m.cfg.vocab_size for r, m in models.items()}
  models["vocab_size"] = pairing.shared_vocab(config, tok, widths)
  if str(s.dataset) == "synthetic":
    models["grader"] = _synthetic_grader(
        str(s.get("style", "terse")), str(s.get("notation", "strict"))
    )
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
  if job == "ssb_data":
    return run_ssb_data(config, workdir)
  if job in ("sample", "rsd"):
    return run_sample(config, workdir, rsd=job == "rsd")
  raise ValueError(
      f"unknown job {job!r}; jobs: train, rl, study, eval, sample, rsd,"
      " topk_cache, ssb_data."
  )
