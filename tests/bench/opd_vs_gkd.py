r"""OPD against GKD (λ = 1) on the synthetic task, from one SFT'd start.

  PYTHONPATH=. python tests/bench/opd_vs_gkd.py --workdir=/tmp/opd_vs_gkd

Stages (cached in ``--workdir``; the study's helpers, ``w2s_jax.study.stages``): a
teacher SFT'd on gold traces (d 64, 2 layers), a small student SFT'd briefly
(d 48, 2 layers), then ``configs/opd.py`` and ``configs/gkd.py`` with
``loss.lambda_on_policy=1`` from that student with the same teacher, steps,
learning rate and sequences per step. Prints one JSON line: greedy and
sampled (T 0.7) accuracy on held-out problems, and the reverse KL to the
teacher, Σ (log π_student − log π_teacher) over the student's own T = 1
samples per token (k1, unbiased), for the start, both arms and the teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _reverse_kl(model_dir, teacher_dir, problems, tmp, n=4, seed=0):
  import jax  # noqa: PLC0415

  from w2s_jax import models  # noqa: PLC0415
  from w2s_jax.data import formatting  # noqa: PLC0415
  from w2s_jax.decoding import generation  # noqa: PLC0415
  from w2s_jax.rl import (
      rollouts,  # noqa: PLC0415
      scoring,  # noqa: PLC0415
  )
  from w2s_jax.training import inputs  # noqa: PLC0415

  tok = inputs.load_tokenizer("char", tmp)
  student = models.load_pretrained(model_dir)
  teacher = models.load_pretrained(teacher_dir)
  fmt = formatting.get_format("raw")
  prompts = [
      [int(t) for t in formatting.encode_prompt(tok, p["question"], fmt)]
      for p in problems
  ]
  v = min(tok.vocab_size, student.cfg.vocab_size, teacher.cfg.vocab_size)
  out = generation.generate(
      student, prompts, max_new_tokens=24, temperature=1.0, n=n,
      rng=jax.random.key(seed), eos_ids=tok.eos_ids, pad_id=tok.pad_id,
      vocab_size=v,
  )  # fmt: skip
  tok_BP, seg_BP = generation.prepare_prompts(prompts, pad_id=tok.pad_id)
  tok_BP, seg_BP = np.repeat(tok_BP, n, 0), np.repeat(seg_BP, n, 0)
  batch = rollouts._assemble(tok_BP, seg_BP, out.tokens, out.lengths)  # noqa: SLF001
  hp = scoring.ScoringHparams(chunked=False, vocab_size=v)
  lp_s = np.asarray(scoring.token_logprobs(student, batch, hp), np.float64)
  lp_t = np.asarray(scoring.token_logprobs(teacher, batch, hp), np.float64)
  mask = batch["completion_mask"][:, 1:] != 0
  return float((lp_s - lp_t)[mask].mean())


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="/tmp/opd_vs_gkd")
  ap.add_argument("--teacher_steps", type=int, default=400)
  ap.add_argument("--student_steps", type=int, default=200)
  ap.add_argument("--rl_steps", type=int, default=100)
  ap.add_argument("--rl_lr", type=float, default=1e-3)
  ap.add_argument("--problems", type=int, default=128)
  args = ap.parse_args()

  from w2s_jax import config_lib  # noqa: PLC0415
  from w2s_jax.study import stages as st  # noqa: PLC0415

  wd = args.workdir
  times: dict[str, float] = {}

  def stage(name, cfg):
    d = os.path.join(wd, name)
    t = time.perf_counter()
    if not os.path.isdir(os.path.join(d, "export")):
      st.run_job(cfg, d)
    times[name] = round(time.perf_counter() - t, 1)
    return st.export_dir(d)

  teacher = stage(
      "teacher",
      st.train_config(
          "sft", seed=1, steps=args.teacher_steps, lr=2e-3, batch_size=32,
          size=(64, 2),
      ),
  )  # fmt: skip
  start = stage(
      "student",
      st.train_config(
          "sft", seed=0, steps=args.student_steps, lr=1e-3, batch_size=32,
          size=(48, 2),
      ),
  )  # fmt: skip
  g, prompts = 4, 4  # OPD: 4 prompts × G 4; GKD: 16 prompts × 1 sequence
  common = dict(
      seed=0, steps=args.rl_steps, lr=args.rl_lr, batch_size=16, init=start,
      teacher__hf_path=teacher, rl__max_new_tokens=24, rl__reward_workers=0,
  )  # fmt: skip
  arms = {
      "opd": stage(
          "opd",
          st.train_config(
              "opd", rl__group_size=g, rl__prompts_per_step=prompts, **common
          ),
      ),
      "gkd_l1": stage(
          "gkd_l1",
          st.train_config(
              "gkd",
              rl__group_size=g,
              rl__prompts_per_step=prompts * g,
              loss__lambda_on_policy=1.0,
              **common,
          ),
      ),
  }
  problems = st.held_out_problems(config_lib.SYNTHETIC_TASK, args.problems)
  result: dict[str, dict[str, float]] = {}
  for name, d in {"start": start, **arms, "teacher": teacher}.items():
    ev = st.evaluate_export(
        d, os.path.join(wd, "eval", name), problems, n=4, temperature=0.7,
        greedy=True, seed=0,
    )  # fmt: skip
    result[name] = {
        "greedy_acc": round(ev["greedy"], 4),
        "sampled_acc_T0.7": round(ev["pass@1"], 4),
        "reverse_kl_per_token": round(
            _reverse_kl(d, teacher, problems, os.path.join(wd, "eval")), 4
        ),
    }
  print(
      json.dumps({
          "problems": args.problems,
          "rl_steps": args.rl_steps,
          "sequences_per_step": prompts * g,
          "results": result,
          "stage_seconds": times,
      })
  )


if __name__ == "__main__":
  main()
