"""The study's arm groups, each a function of a ``Seed`` (see runner.py).

(a) ``w2sr``: W2SR, W2SR-P and the RGR reference; (b) ``rsd``: the small
student on the RSD teacher's traces vs RSD traces; (c) ``preference``:
REDI, DPO and SimPO from W2SR-P with a validation lr sweep; (d)
``rl_and_distill``: offline KD, GRPO, KDRL, KD-only and GKD from W2SR-P.
"""

from __future__ import annotations

import os
import traceback
from typing import TYPE_CHECKING, Any

from w2s_jax import methods
from w2s_jax.study import report
from w2s_jax.study import stages as st

if TYPE_CHECKING:
  from w2s_jax.study.seed import Seed

ANY_REWARD = "w2s_jax.data.synthetic_grading:correct_any"
D_ARMS = (
    "kd",
    "grpo",
    "kdrl_const",
    "kdrl_anneal",
    "kd_rkl",
    "gkd_l0",
    "gkd_l1",
)


def w2sr(s: Seed, groups, latent: str, strong: str, base) -> str:
  """W2SR and W2SR-P; returns the SFT stage of (c) and (d): W2SR-P, or
  W2SR when no weak trace is correct (``sft_note`` says so)."""
  c = s.c
  weak = st.export_dir(s.stages.path("weak_teacher"))
  weak_traces = s.sample("traces_weak", weak, pairs=True)
  sft_kw = dict(
      steps=int(c.steps.w2sr),
      lr=float(c.lr.sft),
      init=latent,
      arg=f"traces={weak_traces}",
  )
  serves = [g for g in ("c", "d") if g in groups]
  also = f"also the SFT start of ({', '.join(serves)})" if serves else ""
  w2sr = s.train("w2sr_all", "sft", **sft_kw)
  w2sr_row = s.eval_row("a", "w2sr", "W2SR: SFT on all weak traces", w2sr)
  if "a" in groups:
    grpo = rl_arm(
        s,
        "a",
        "grpo_base",
        "GRPO on the untrained strong student (RGR reference)",
        "grpo",
        "",
        init=latent,
        teacher=strong,
    )
  arm = "W2SR-P: SFT on correct weak traces"
  if s.has_correct("a", "w2sr_p", arm, weak_traces):
    sft = s.train("w2sr_correct", "sft", data__filter="correct", **sft_kw)
    s.eval_row("a", "w2sr_p", arm, sft, note=also)
  else:
    # No positives at this size: (c) and (d) start from W2SR, and say so.
    sft, s.sft_note = w2sr, "started from W2SR (no W2SR-P at this size)"
    w2sr_row["note"] = also
  if "a" in groups:
    report.attach_rgr(
        s.rows,
        base,
        grpo,
        s.outcomes,
        min_gain=float(c.claims.rgr_min_gain),
    )
  return sft


def preference(s: Seed, sft: str | None) -> None:
  import jax  # noqa: PLC0415

  c = s.c
  arms = (("redi", "REDI"), ("dpo", "DPO"), ("simpo", "SimPO"))
  if sft is None:
    for mid, name in arms:
      s.not_run("c", mid, f"W2SR-P -> {name}", "not run: no W2SR-P")
    return
  pairs = os.path.join(s.stages.path("traces_weak"), "pairs.jsonl")
  with open(pairs) as f:
    num_pairs = sum(1 for line in f if line.strip())
  # A batch must split evenly over the devices and fit in the pair set.
  ndev = jax.device_count()
  batch = min(int(c.batch_size), num_pairs) // ndev * ndev
  for method, name in arms:
    arm = f"W2SR-P -> {name}"
    if batch < 1:
      s.not_run(
          "c",
          method,
          arm,
          f"not run: {num_pairs} pairs < one batch of {ndev}",
      )
      continue
    # The learning rate with the best validation score (first on ties).
    best = None
    for lr in c.lr_sweep[method]:
      out = s.train(
          f"{method}_lr{lr:g}",
          method,
          steps=int(c.steps.pref),
          lr=float(lr),
          init=sft,
          arg=f"pairs={pairs}",
          batch_override=batch,
      )
      score = s.val_score(f"{method}_lr{lr:g}", out)
      if best is None or score > best[0]:
        best = (score, lr, out)
    score, lr, out = best
    note = f"lr {lr:g} chosen on validation ({score:.3f})"
    s.eval_row("c", method, arm, out, note=join(note, s.sft_note))


def rsd(s: Seed) -> None:
  """(b): the small student on the RSD teacher's traces vs RSD traces.

  The RSD teacher writes ``running`` traces (results only: the operands a
  small model needs are skipped) and the small student's ``postfix``
  notation, so it can accept the student's tokens in RSD.
  """
  c, steps = s.c, s.c.steps
  small = s.gold("small_student")
  teacher = s.gold("rsd_teacher")
  s.eval_row("b", "small", "small student, before (postfix)", small)
  s.eval_row("b", "rsd_teacher", "RSD teacher (running and postfix)", teacher)
  teacher_traces = s.sample("traces_rsd_teacher", teacher, k=1)
  rsd_traces = s.sample(
      "traces_rsd", teacher, student=small, k=int(c.sample.rsd_k)
  )
  inputs = {"teacher": teacher_traces, "rsd": rsd_traces}
  matched = s.stages.run(
      "traces_matched",
      lambda d: st.matched_traces(inputs, d),
      key=inputs,
  )
  count = int(matched["count"])
  note = f"{count} traces each, {int(steps.rsd_sft)} steps"
  for name, mid, arm in (
      ("teacher", "rsd_teacher_sft", "small student SFT on teacher traces"),
      ("rsd", "rsd_sft", "small student SFT on RSD traces"),
  ):
    if count < 1:
      s.not_run("b", mid, arm, "not run: no correct traces to match")
      continue
    path = os.path.join(s.stages.path("traces_matched"), f"{name}.jsonl")
    out = s.train(
        mid,
        "sft",
        steps=int(steps.rsd_sft),
        lr=float(c.lr.sft),
        init=small,
        arg=f"traces={path}",
        data__filter="correct",
    )
    s.eval_row("b", mid, arm, out, note=note)


def rl_arm(
    s: Seed,
    group: str,
    mid: str,
    arm: str,
    cfg_name: str,
    arg: str,
    *,
    init: str,
    teacher: str,
    **keys,
) -> dict[str, Any] | None:
  """An RL arm (job 'rl'); a missing config or a failure is 'not run'."""
  c, rl = s.c, s.c.rl
  if not bool(c.run_rl):
    s.not_run(group, mid, arm, "not run (run_rl=False)")
    return None
  if not st.has_config(cfg_name):
    s.not_run(group, mid, arm, f"not run: configs/{cfg_name}.py missing")
    return None
  reward = {}
  if str(c.grading) == "any":
    reward = dict(rl__reward="fn", rl__reward_fn=ANY_REWARD)
  # Sequences per step: GKD takes one per prompt, GRPO a group per prompt.
  per_prompt = 1 if cfg_name == "gkd" else int(rl.group_size)
  prompts = int(rl.prompts_per_step) * int(rl.group_size) // per_prompt
  keys = {
      "rl__group_size": int(rl.group_size),
      "rl__prompts_per_step": prompts,
      "rl__max_new_tokens": int(rl.max_new_tokens),
      # In-process grading: no deadlines that depend on machine load.
      "rl__reward_workers": 0,
      **reward,
      **keys,
  }
  if "beta_ref" in methods.get(cfg_name).hparams.keys():  # not GKD's
    keys.setdefault("loss__beta_ref", float(rl.beta_ref))
  try:
    out = s.train(
        mid,
        cfg_name,
        arg=arg,
        steps=int(c.steps.rl),
        lr=float(c.lr.rl),
        init=init,
        teacher__hf_path=teacher,
        **keys,
    )
  except st.StaleStageError:
    raise
  except Exception as e:  # noqa: BLE001 - an RL arm must not sink the study
    traceback.print_exc()
    s.not_run(group, mid, arm, f"not run: {type(e).__name__}: {e}"[:200])
    return None
  note = s.sft_note if init != s.latent else ""
  return s.eval_row(group, mid, arm, out, note=note)


def rl_and_distill(s: Seed, sft: str | None, strong: str) -> None:
  c, rl = s.c, s.c.rl
  if sft is None:
    for mid in D_ARMS:
      s.not_run("d", mid, f"W2SR-P -> {mid}", "not run: no W2SR-P")
    return
  teacher_traces = s.sample("traces_strong", strong, k=1)
  arm = "W2SR-P -> offline KD (forward KL)"
  if s.has_correct("d", "kd", arm, teacher_traces):
    kd = s.train(
        "kd",
        "distill",
        arg=f"traces={teacher_traces}",
        steps=int(c.steps.kd),
        lr=float(c.lr.sft),
        init=sft,
        teacher__hf_path=strong,
        data__filter="correct",
    )
    s.eval_row("d", "kd", arm, kd, note=s.sft_note)
  beta, floor = float(rl.kdrl_beta), float(rl.kdrl_beta_min)
  # The anneal reaches its floor after kdrl_anneal_frac of the RL steps.
  decay = (beta - floor) / max(float(rl.kdrl_anneal_frac) * c.steps.rl, 1)
  kd_keys = dict(loss__kd_beta_init=beta)
  rl_arms = (
      ("grpo", "W2SR-P -> GRPO", "grpo", "", {}),
      (
          "kdrl_const",
          f"W2SR-P -> KDRL, constant beta {beta:g}",
          "kdrl",
          "beta=const",
          {**kd_keys, "loss__kd_beta_min": beta},
      ),
      (
          "kdrl_anneal",
          f"W2SR-P -> KDRL, beta {beta:g} annealed to {floor:g}",
          "kdrl",
          "beta=anneal",
          {
              **kd_keys,
              "loss__kd_beta_min": floor,
              "loss__kd_beta_decay": decay,
          },
      ),
      (
          # KDRL's KD-only baseline: the reverse KL to the teacher on the
          # student's own samples, no reward (GKD with lambda 1, JSD(1)).
          "kd_rkl",
          "W2SR-P -> KD-only, on-policy reverse KL",
          "gkd",
          "",
          {"loss__lambda_on_policy": 1.0, "loss__beta": 1.0},
      ),
      (
          "gkd_l0",
          "W2SR-P -> GKD, lambda=0",
          "gkd",
          "",
          {"loss__lambda_on_policy": 0.0},
      ),
      (
          "gkd_l1",
          "W2SR-P -> GKD, lambda=1",
          "gkd",
          "",
          {"loss__lambda_on_policy": 1.0},
      ),
  )
  for mid, arm, cfg_name, arg, keys in rl_arms:
    rl_arm(s, "d", mid, arm, cfg_name, arg, init=sft, teacher=strong, **keys)


def join(*notes: str) -> str:
  return "; ".join(n for n in notes if n)
