r"""The weak-to-strong study on the synthetic task (issue 7): ``make demo``.

  python -m w2s_jax.main --config=configs/study.py --workdir=demo_out
  python -m w2s_jax.main --config=configs/study.py:quick --workdir=/tmp/q
  python -m w2s_jax.main --config=configs/study.py:seeds=3 --workdir=demo3

Models (per seed, each a cached stage; sizes are ``(d_model, layers)``):

* weak teacher: briefly trained on gold ``terse`` traces (right
  format, imperfect knowledge);
* strong teacher: trained to ~99% on gold ``terse`` traces (by default as
  wide as the weak teacher, trained twice as long);
* strong student: pretrained only on the ``latent`` notation of the
  same computation (``c:9*0+0.9*0=0,0+0=0 a0``): it has the skill, not the
  asked format; its accuracy on latent prompts is the ceiling row;
* small student: tiny, trained on ``postfix`` traces (its own notation, so
  the strong teacher's ``terse`` traces are unlikely under it: RSD's lever).

Arms (rows of the table):

(a) W2SR: the strong student SFT'd on the weak teacher's sampled traces, all
    (W2SR) vs correct only (W2SR-P); RGR against GRPO on the same student
    and, labelled separately, against the latent ceiling.
(b) RSD: the small student SFT'd on the strong teacher's own (correct)
    traces vs on RSD traces (teacher proposes, small student accepts).
(c) From the W2SR SFT stage: REDI vs SFT only vs DPO vs SimPO on the weak
    teacher's (correct, incorrect) pairs.
(d) From the same SFT stage, with the strong teacher: offline KD on its
    traces, GRPO, KDRL (constant and annealed beta), GKD (lambda 0 and 1);
    the RL arms need ``configs/{grpo,kdrl,gkd}.py`` and are reported as
    'not run' when those are missing or fail.

Every model is evaluated on held-out problems: pass@1 over ``eval.n``
samples at ``eval.temperature``, greedy accuracy, and per-step accuracy.
``results.json`` / ``results.md`` / ``results.png`` (mean +- std over
seeds) are written to the workdir and the table is printed.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

from w2s_jax import study_report
from w2s_jax import study_stages as st

ARM_GROUPS = ("a", "b", "c", "d")


def _task_keys(config: Any) -> dict[str, Any]:
  t = config.task
  return dict(
      modulus=int(t.modulus),
      ops=str(t.ops),
      steps=int(t.steps),
      distractors=int(t.distractors),
  )


def _size(config: Any, name: str) -> tuple[int, int]:
  m = config.models[name]
  return int(m.d_model), int(m.num_layers)


class _Seed:
  """The stages of one seed: models, traces, arms and their evaluations."""

  def __init__(self, config: Any, workdir: str, seed: int, log):
    self.c = config
    self.seed = seed
    self.stages = st.Stages(os.path.join(workdir, f"seed{seed}"), log)
    self.task = _task_keys(config)
    self.rows: list[dict[str, Any]] = []
    e = config.eval
    self.test = st.test_problems(self.task, int(e.num_problems))

  # -- helpers ---------------------------------------------------------------

  def _train(self, name: str, cfg_name: str, **kw) -> str:
    """A training stage; returns its export directory."""

    batch = int(kw.pop("batch_override", 0) or self.c.batch_size)

    def fn(d):
      cfg = st.train_config(cfg_name, seed=self.seed, batch_size=batch, **kw)
      # The synthetic task's knobs live in the data section of every
      # training config; keep them in step with the study's task.
      for k, v in self.task.items():
        if k in cfg.data:
          cfg.data[k] = v
      return st.run_job(cfg, d)

    self.stages.run(name, fn)
    return st.export_dir(self.stages.path(name))

  def _gold(self, name: str, style: str, size, steps: int, split="train"):
    return self._train(
        name,
        "sft",
        steps=steps,
        lr=float(self.c.lr.pretrain),
        size=size,
        data__style=style,
        data__split=split,
        data__num_examples=int(self.c.num_examples),
        optim__warmup_frac=0.05,
    )

  def _sample(self, name: str, teacher: str, student: str = "", **kw) -> str:
    s = self.c.sample

    def fn(d):
      cfg = st.sample_config(
          seed=self.seed,
          teacher=teacher,
          student=student,
          num_problems=int(s.num_problems),
          k=int(kw.pop("k", s.k)),
          temperature=float(s.temperature),
          **kw,
      )
      for k, v in self.task.items():
        cfg.sample[k] = v
      return st.run_job(cfg, d)

    self.stages.run(name, fn)
    return os.path.join(self.stages.path(name), "traces.jsonl")

  def _eval(
      self,
      group: str,
      arm: str,
      name: str,
      model_dir: str,
      *,
      style: str = "terse",
      step_styles: tuple[str, ...] = ("terse",),
      note: str = "",
  ) -> dict[str, Any]:
    e = self.c.eval
    problems = (
        self.test
        if style != "latent"
        else st.test_problems(self.task, int(e.num_problems), "latent")
    )
    res = self.stages.run(
        f"eval_{name}",
        lambda d: st.evaluate_export(
            model_dir,
            d,
            problems,
            n=int(e.n),
            temperature=float(e.temperature),
            greedy=bool(e.greedy),
            seed=self.seed,
            style=style,
            step_styles=step_styles,
        ),
    )
    row = {"group": group, "arm": arm, "seed": self.seed, "note": note}
    row.update(
        {k: res[k] for k in ("pass@1", "greedy", "step_acc") if k in res}
    )
    self.rows.append(row)
    return row

  def _has_correct(self, group: str, arm: str, traces_path: str) -> bool:
    """Whether a trace file has a correct trace; else a 'not run' row."""
    from w2s_jax.data import traces  # noqa: PLC0415

    records = traces.read_sft(traces_path).records
    if any(r.correct for r in records):
      return True
    self._not_run(
        group,
        arm,
        f"not run: 0 of {len(records)} traces correct (teacher too weak at"
        " this size)",
    )
    return False

  def _not_run(self, group: str, arm: str, why: str) -> None:
    self.rows.append(
        {"group": group, "arm": arm, "seed": self.seed, "note": why}
    )

  # -- the study -------------------------------------------------------------

  def run(self, groups: tuple[str, ...]) -> list[dict[str, Any]]:
    c, steps = self.c, self.c.steps
    weak = self._gold(
        "weak_teacher", "terse", _size(c, "weak"), int(steps.weak_teacher)
    )
    strong = self._gold(
        "strong_teacher",
        "terse",
        _size(c, "strong"),
        int(steps.strong_teacher),
    )
    latent = self._gold(
        "strong_student",
        "latent",
        _size(c, "strong"),
        int(steps.strong_student),
        split="pretrain",
    )
    self._eval("base", "weak teacher", "weak_teacher", weak)
    self._eval("base", "strong teacher", "strong_teacher", strong)
    base = self._eval(
        "base", "strong student, untrained (terse)", "strong_student", latent
    )
    ceiling = self._eval(
        "base",
        "strong student, latent ceiling (own format)",
        "strong_student_latent",
        latent,
        style="latent",
        step_styles=("latent",),
    )
    if not set(groups) & {"a", "c", "d"}:
      if "b" in groups:
        self._rsd(strong)
      return self.rows
    weak_traces = self._sample("traces_weak", weak, pairs=True)
    sft_kw = dict(
        steps=int(steps.w2sr),
        lr=float(c.lr.sft),
        init=latent,
        arg=f"traces={weak_traces}",
    )
    w2sr = self._train("w2sr_all", "sft", **sft_kw)
    sft_row = self._eval("a", "W2SR: SFT on all weak traces", "w2sr_all", w2sr)
    # The same model is (c)'s "SFT only" and the start of every (d) arm.
    for g, arm in (("c", "SFT only (the W2SR stage)"), ("d", "SFT (start)")):
      if g in groups:
        self.rows.append({**sft_row, "group": g, "arm": arm})
    if "a" in groups:
      arm = "W2SR-P: SFT on correct weak traces"
      if self._has_correct("a", arm, weak_traces):
        w2srp = self._train(
            "w2sr_correct", "sft", data__filter="correct", **sft_kw
        )
        self._eval("a", arm, "w2sr_correct", w2srp)
      grpo_base = self._rl(
          "a",
          "GRPO on the untrained strong student (RGR reference)",
          "grpo_base",
          "grpo",
          "",
          init=latent,
          teacher=strong,
      )
      study_report.attach_rgr(self.rows, base, ceiling, grpo_base)
    if "b" in groups:
      self._rsd(strong)
    if "c" in groups:
      self._arms_c(w2sr)
    if "d" in groups:
      self._arms_d(w2sr, strong)
    return self.rows

  def _arms_c(self, w2sr: str) -> None:
    import jax  # noqa: PLC0415

    c = self.c
    pairs = os.path.join(self.stages.path("traces_weak"), "pairs.jsonl")
    with open(pairs) as f:
      num_pairs = sum(1 for line in f if line.strip())
    # A batch must split evenly over the devices and fit in the pair set.
    ndev = jax.device_count()
    batch = min(int(c.batch_size), num_pairs) // ndev * ndev
    for method, arm in (
        ("redi", "SFT -> REDI"),
        ("dpo", "SFT -> DPO"),
        ("simpo", "SFT -> SimPO"),
    ):
      if batch < 1:
        self._not_run(
            "c", arm, f"not run: {num_pairs} pairs < one batch of {ndev}"
        )
        continue
      out = self._train(
          method,
          method,
          steps=int(c.steps.pref),
          lr=float(c.lr[method]),
          init=w2sr,
          arg=f"pairs={pairs}",
          batch_override=batch,
      )
      self._eval("c", arm, method, out)

  def _rsd(self, strong: str) -> None:
    c, steps = self.c, self.c.steps
    small = self._gold(
        "small_student", "postfix", _size(c, "small"), int(steps.small_student)
    )
    both = ("terse", "postfix")
    self._eval(
        "b",
        "small student, before (postfix)",
        "small_student",
        small,
        step_styles=both,
    )
    teacher_traces = self._sample("traces_strong", strong, k=1)
    rsd_traces = self._sample("traces_rsd", strong, student=small, k=1)
    for name, path, arm in (
        ("rsd_teacher_sft", teacher_traces, "SFT on strong-teacher traces"),
        ("rsd_sft", rsd_traces, "SFT on RSD traces"),
    ):
      if not self._has_correct("b", arm, path):
        continue
      out = self._train(
          name,
          "sft",
          steps=int(steps.rsd_sft),
          lr=float(c.lr.sft),
          init=small,
          arg=f"traces={path}",
          data__filter="correct",
      )
      self._eval("b", arm, name, out, step_styles=both)

  def _rl(
      self,
      group: str,
      arm: str,
      name: str,
      cfg_name: str,
      arg: str,
      *,
      init: str,
      teacher: str,
      **keys,
  ) -> dict[str, Any] | None:
    """An RL arm (job 'rl'); a missing config or a failure is 'not run'."""
    c, rl = self.c, self.c.rl
    if not bool(c.run_rl):
      self._not_run(group, arm, "not run (run_rl=False)")
      return None
    if not st.has_config(cfg_name):
      self._not_run(group, arm, f"not run: configs/{cfg_name}.py missing")
      return None
    try:
      out = self._train(
          name,
          cfg_name,
          arg=arg,
          steps=int(c.steps.rl),
          lr=float(c.lr.rl),
          init=init,
          teacher__hf_path=teacher,
          rl__group_size=int(rl.group_size),
          rl__prompts_per_step=int(rl.prompts_per_step),
          rl__max_new_tokens=int(rl.max_new_tokens),
          **keys,
      )
    except Exception as e:  # noqa: BLE001 - an RL arm must not sink the study
      traceback.print_exc()
      self._not_run(group, arm, f"not run: {type(e).__name__}: {e}"[:200])
      return None
    return self._eval(group, arm, name, out)

  def _arms_d(self, w2sr: str, strong: str) -> None:
    c = self.c
    teacher_traces = self._sample("traces_strong", strong, k=1)
    arm = "KD (offline, forward KL)"
    if self._has_correct("d", arm, teacher_traces):
      kd = self._train(
          "kd",
          "distill",
          arg=f"traces={teacher_traces}",
          steps=int(c.steps.kd),
          lr=float(c.lr.sft),
          init=w2sr,
          teacher__hf_path=strong,
          data__filter="correct",
      )
      self._eval("d", arm, "kd", kd)
    rl_arms = (
        ("GRPO", "grpo", "grpo", "", {}),
        ("KDRL, constant beta", "kdrl_const", "kdrl", "beta=const", {}),
        ("KDRL, annealed beta", "kdrl_anneal", "kdrl", "beta=anneal", {}),
        ("GKD, lambda=0", "gkd_l0", "gkd", "", {"loss__lambda_on_policy": 0.0}),
        ("GKD, lambda=1", "gkd_l1", "gkd", "", {"loss__lambda_on_policy": 1.0}),
    )
    for arm, name, cfg_name, arg, keys in rl_arms:
      self._rl("d", arm, name, cfg_name, arg, init=w2sr, teacher=strong, **keys)


def _compilation_cache(workdir: str) -> None:
  """A persistent XLA cache in the workdir, unless one is configured.

  Most stages are small, so compiling dominates them; stages with the same
  architecture and shapes (the SFT arms, the evaluations, a rerun) then
  reuse each other's executables.
  """
  import jax  # noqa: PLC0415

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update(
        "jax_compilation_cache_dir", os.path.join(workdir, ".jax_cache")
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the study; writes and prints the results table."""
  groups = tuple(ch for ch in str(config.arms) if ch not in ", ")
  bad = sorted(set(groups) - set(ARM_GROUPS))
  if bad or not groups:
    raise ValueError(
        f"study arms={config.arms!r}: give letters of {ARM_GROUPS}, e.g."
        " --config=configs/study.py:arms=ac (or --config.arms=ac)."
    )
  seeds = int(config.seeds)
  if seeds < 1:
    raise ValueError(f"study seeds={seeds}: must be >= 1.")
  os.makedirs(workdir, exist_ok=True)
  _compilation_cache(workdir)
  start = time.time()

  def log(line: str) -> None:
    print(f"[study {time.time() - start:7.1f}s] {line}", flush=True)

  rows, timings = [], {}
  for s in range(seeds):
    seed_run = _Seed(config, workdir, s, log)
    rows.extend(seed_run.run(groups))
    timings[f"seed{s}"] = seed_run.stages.timings
  result = study_report.write(
      workdir,
      rows,
      meta={
          "config": config.to_dict(),
          "wall_seconds": time.time() - start,
          "stage_seconds": timings,
      },
  )
  print(result["table"])
  print(
      f"\nSaved {workdir}/results.json, results.md, results.png"
      f" ({time.time() - start:.0f}s)"
  )
  return {"wall_seconds": time.time() - start, "rows": float(len(rows))}
