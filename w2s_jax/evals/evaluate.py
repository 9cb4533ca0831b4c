"""Accuracy and pass@k through the jitted sampler.

``evaluate`` samples ``n`` completions per problem in batches (with a tqdm
bar), grades them on the host, and returns a summary (pass@k with the
unbiased estimator for every k <= n, maj@k, mean completion length) and
per-item rows. ``write_results`` stores both atomically (per-item JSONL +
summary JSON).

Tasks: ``synthetic`` (the built-in chain task: answer and per-step accuracy),
``gsm8k`` and ``math`` (extraction + equivalence, docs/methods.md, "Grading").
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from w2s_jax.data import formatting, synthetic
from w2s_jax.decoding import generation
from w2s_jax.evals import accuracy, extract, rewards


def _prompt_ids(tokenizer, question: str, fmt) -> list[int]:
  return [int(t) for t in formatting.encode_prompt(tokenizer, question, fmt)]


def evaluate(
    model,
    tokenizer,
    problems: Sequence[dict[str, Any]],
    *,
    task: str = "synthetic",
    fmt: Any = "chat",
    style: str = "terse",
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    ks: Sequence[int] | None = None,
    verifier=None,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Samples and grades ``n`` completions for each problem.

  Args:
    model: a Transformer.
    tokenizer: its tokenizer.
    problems: dicts with ``question`` and ``answer`` (gold); synthetic
      problems also carry ``spec`` (``Problem.from_spec``).
    task: 'synthetic', 'gsm8k' or 'math'.
    fmt: prompt format (name or PromptFormat).
    style: synthetic solution style used for grading.
    n: samples per problem (n > 1 needs temperature > 0 to differ).
    temperature, top_p, max_new_tokens: sampling.
    batch_size: prompts per sampler call.
    seed: PRNG seed.
    ks: pass@k values to report (default 1 and n).
    verifier: an ``equivalence.Verifier`` for math (default: string match
      plus the shared verifier).
    progress: show a tqdm bar.

  Returns:
    (summary, rows): summary has ``n``, ``num_problems``, ``pass@k``,
    ``maj@n``, ``mean_length`` (and ``step_accuracy`` for synthetic).
  """
  if task not in ("synthetic", "gsm8k", "math"):
    raise ValueError(
        f"task {task!r} is not one of 'synthetic', 'gsm8k', 'math'."
    )
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}.")
  if n > 1 and temperature == 0.0:
    raise ValueError(
        "n > 1 samples need temperature > 0 (greedy repeats itself)."
    )
  fmt = formatting.get_format(fmt) if isinstance(fmt, str) else fmt
  ks = sorted({1, n} if ks is None else {int(k) for k in ks if 0 < int(k) <= n})
  rows: list[dict[str, Any]] = []
  rng = jax.random.key(seed)
  bar = tqdm.tqdm(
      total=len(problems), desc=f"eval {task}", disable=not progress
  )
  for start in range(0, len(problems), batch_size):
    chunk = problems[start : start + batch_size]
    prompts = [_prompt_ids(tokenizer, p["question"], fmt) for p in chunk]
    rng, key = jax.random.split(rng)
    out = generation.generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        n=n,
        rng=key,
        eos_ids=tokenizer.eos_ids,
        pad_id=tokenizer.pad_id,
        vocab_size=min(tokenizer.vocab_size, model.cfg.vocab_size),
    )
    tokens = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    for i, prob in enumerate(chunk):
      texts, lens = [], []
      for j in range(n):
        r = i * n + j
        texts.append(
            tokenizer.decode(
                tokens[r, : lengths[r]].tolist(), skip_special_tokens=True
            )
        )
        lens.append(int(lengths[r]))
      rows.append(_grade(prob, texts, lens, task, style, verifier))
    bar.update(len(chunk))
  bar.close()
  return summarize(rows, ks), rows


def _grade(prob, texts, lens, task, style, verifier) -> dict[str, Any]:
  row = {
      "id": prob.get("id"),
      "question": prob["question"],
      "gold": str(prob["answer"]),
  }
  if task == "synthetic":
    problem = synthetic.Problem.from_spec(prob["spec"])
    correct = [synthetic.grade(problem, t, style) for t in texts]
    answers = [synthetic.answer_of(t, style) for t in texts]
    row["step_accuracy"] = [
        synthetic.step_accuracy(problem, t, style) for t in texts
    ]
    answers = [None if a is None else str(a) for a in answers]
  else:
    kind = "gsm8k" if task == "gsm8k" else "math"
    grades = rewards.grade_completions(
        texts, [row["gold"]] * len(texts), task=kind, verifier=verifier
    )
    correct = [g.correct for g in grades]
    answers = [extract.extract_answer(t, kind).answer for t in texts]
  row.update(completions=texts, answers=answers, correct=correct, lengths=lens)
  return row


def summarize(
    rows: list[dict[str, Any]], ks: Sequence[int]
) -> dict[str, float]:
  """pass@k over problems, maj@n, mean length (and step accuracy)."""
  if not rows:
    return {"num_problems": 0}
  correct_PN = np.array([r["correct"] for r in rows], dtype=bool)
  n = correct_PN.shape[1]
  table = accuracy.pass_at_k_table(correct_PN, ks)
  out: dict[str, float] = {"num_problems": float(len(rows)), "n": float(n)}
  out.update({k: float(v) for k, v in table.items() if k.startswith("pass@")})
  maj = [
      accuracy.maj_at_k(r["answers"], r["correct"], n)
      if n > 1
      else float(r["correct"][0])
      for r in rows
  ]
  out[f"maj@{n}"] = float(np.mean(maj))
  out["mean_length"] = float(np.mean([np.mean(r["lengths"]) for r in rows]))
  if "step_accuracy" in rows[0]:
    out["step_accuracy"] = float(
        np.mean([np.mean(r["step_accuracy"]) for r in rows])
    )
  return out


def _atomic_write(path: str, text: str) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
      dir=d, prefix=".tmp_", suffix=os.path.basename(path)
  )
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_results(
    out_dir: str, summary: dict[str, float], rows: list[dict[str, Any]]
) -> None:
  """``items.jsonl`` and ``summary.json`` in ``out_dir``, each atomically."""
  _atomic_write(
      os.path.join(out_dir, "items.jsonl"),
      "".join(json.dumps(r, default=str) + "\n" for r in rows),
  )
  _atomic_write(
      os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2)
  )


def synthetic_problems(
    task: synthetic.TaskConfig, n: int, split: str = "test", seed: int = 0
):
  """Problems of the synthetic task as evaluation dicts."""
  return [
      {
          "id": p.spec,
          "spec": p.spec,
          "question": synthetic.prompt(p),
          "answer": p.answer,
      }
      for p in synthetic.sample_problems(task, split, n, seed=seed)
  ]
