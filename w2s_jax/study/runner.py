r"""The weak-to-strong study on the synthetic task (issue 7, 14): ``make demo``.

  python -m w2s_jax.main --config=configs/study.py --workdir=demo_out
  python -m w2s_jax.main --config=configs/study.py:quick --workdir=/tmp/q
  python -m w2s_jax.main --config=configs/study.py:seeds=5 --workdir=demo5

Models (per seed, each a cached stage; sizes are ``(d_model, layers)``):

* weak teacher: trained on ``terse`` traces of a perturbed fact table with
  random slips (``world.weak_fact_error_rate``, ``world.weak_slip_prob``),
  so it is weak by construction (right format, wrong knowledge);
* strong teacher: trained on gold ``terse`` traces;
* strong student: pretrained only on the ``latent`` notation of the same
  computation (``c:9*0+0.9*0=0,0+0=0 a0``): it has the skill, not the asked
  format; its accuracy on latent prompts is the ceiling row;
* small student: trained on ``postfix`` traces (its own notation, so the
  strong teacher's ``terse`` traces are unlikely under it: RSD's lever).

Every answer is graded in any notation of the task (skill) and, apart, for
the asked ``terse`` format (``format`` column); the chance row is what
always answering the most common answer scores. Models are evaluated on
``eval.num_problems`` held-out test problems; learning rates are chosen on
a separate validation split, never on test.

Arms (one row per model; a model that serves several arms is one row that
says so):

(a) W2SR: the strong student SFT'd on the weak teacher's sampled traces, all
    (W2SR) vs correct only (W2SR-P, also the SFT stage of (c) and (d)); the
    RGR reference is GRPO on the untrained student, reported with its gain
    (RGR is undefined below ``claims.rgr_min_gain``).
(b) RSD: the small student SFT'd on the strong teacher's correct traces vs
    on RSD traces (``sample.rsd_k`` samples per problem, the shortest
    passing one kept), both cut to the same count, same steps.
(c) From W2SR-P: REDI, DPO, SimPO on the weak teacher's (correct,
    incorrect) pairs, each at the learning rate of ``lr_sweep`` that scores
    best on validation.
(d) From W2SR-P, with the strong teacher: offline KD on its traces, GRPO,
    KDRL (constant and annealed beta), GKD (lambda 0 and 1), all with the
    same steps, ``beta_ref`` and sequences per step.

``results.json`` (a function of the config: no wall times; those go to
``timings.json``), ``results.md`` and ``results.png`` (one panel per claim
of ``configs/study.py``: the two models it compares, their 95% CIs, the
paired difference and the verdict) are written to the workdir.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

from w2s_jax import methods
from w2s_jax.study import report
from w2s_jax.study import stages as st

ARM_GROUPS = ("a", "b", "c", "d")
ANY_REWARD = "w2s_jax.data.synthetic_grading:correct_any"
D_ARMS = ("kd", "grpo", "kdrl_const", "kdrl_anneal", "gkd_l0", "gkd_l1")


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
    self.sft_note = ""  # how (c) and (d) started, when not from W2SR-P
    # Per-problem any-notation scores on test, by model id (paired stats).
    self.outcomes: dict[str, list[float]] = {}
    e = config.eval
    self.test = st.held_out_problems(self.task, int(e.num_problems))
    self.val = st.held_out_problems(self.task, int(e.num_val), split="val")

  # -- helpers ---------------------------------------------------------------

  def _train(self, name: str, cfg_name: str, **kw) -> str:
    """A training stage; returns its export directory."""
    batch = int(kw.pop("batch_override", 0) or self.c.batch_size)
    cfg = st.train_config(cfg_name, seed=self.seed, batch_size=batch, **kw)
    # The synthetic task's knobs live in the data section of every
    # training config; keep them in step with the study's task.
    for k, v in self.task.items():
      if k in cfg.data:
        cfg.data[k] = v
    self.stages.run(name, lambda d: st.run_job(cfg, d), key=cfg.to_dict())
    return st.export_dir(self.stages.path(name))

  def _gold(self, name: str, style: str, size, steps: int, **data):
    return self._train(
        name,
        "sft",
        steps=steps,
        lr=float(self.c.lr.pretrain),
        size=size,
        data__style=style,
        data__num_examples=int(self.c.num_examples),
        optim__warmup_frac=0.05,
        **{f"data__{k}": v for k, v in data.items()},
    )

  def _sample(self, name: str, teacher: str, student: str = "", **kw) -> str:
    s = self.c.sample
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
    cfg.sample.notation = str(self.c.grading)
    self.stages.run(name, lambda d: st.run_job(cfg, d), key=cfg.to_dict())
    return os.path.join(self.stages.path(name), "traces.jsonl")

  def _evaluate(
      self, name: str, model_dir: str, problems, style: str, greedy: bool
  ) -> dict[str, Any]:
    e = self.c.eval
    key = dict(
        model=model_dir,
        problems=[p["id"] for p in problems],
        style=style,
        n=int(e.n),
        temperature=float(e.temperature),
        greedy=greedy,
        seed=self.seed,
    )
    return self.stages.run(
        name,
        lambda d: st.evaluate_export(
            model_dir,
            d,
            problems,
            n=int(e.n),
            temperature=float(e.temperature),
            greedy=greedy,
            seed=self.seed,
            style=style,
        ),
        key=key,
    )

  def _eval(
      self,
      group: str,
      mid: str,
      arm: str,
      model_dir: str,
      *,
      style: str = "terse",
      note: str = "",
  ) -> dict[str, Any]:
    """Evaluates a model on test; appends and returns its row."""
    problems = self.test
    if style != "terse":
      problems = st.held_out_problems(
          self.task, int(self.c.eval.num_problems), style
      )
    res = self._evaluate(
        f"eval_{mid}", model_dir, problems, style, bool(self.c.eval.greedy)
    )
    row = {
        "group": group,
        "id": mid,
        "arm": arm,
        "seed": self.seed,
        "note": note,
    }
    row.update({k: res[k] for k in report.METRICS if k in res})
    self.rows.append(row)
    self.outcomes[mid] = list(res["outcomes"])
    return row

  def _val_score(self, mid: str, model_dir: str) -> float:
    """Validation answer accuracy (sampled, any notation): for choices."""
    return float(
        self._evaluate(f"val_{mid}", model_dir, self.val, "terse", False)[
            "pass@1"
        ]
    )

  def _has_correct(self, group: str, mid: str, arm: str, path: str) -> bool:
    """Whether a trace file has a correct trace; else a 'not run' row."""
    from w2s_jax.data import traces  # noqa: PLC0415

    records = traces.read_sft(path).records
    if any(r.correct for r in records):
      return True
    self._not_run(
        group,
        mid,
        arm,
        f"not run: 0 of {len(records)} traces correct (teacher too weak at"
        " this size)",
    )
    return False

  def _not_run(self, group: str, mid: str, arm: str, why: str) -> None:
    self.rows.append(
        {"group": group, "id": mid, "arm": arm, "seed": self.seed, "note": why}
    )

  # -- the study -------------------------------------------------------------

  def run(self, groups: tuple[str, ...]) -> list[dict[str, Any]]:
    c, steps, w = self.c, self.c.steps, self.c.world
    answer, share = st.chance(self.test)
    self.rows.append({
        "group": "base",
        "id": "chance",
        "arm": f"chance: always answer {answer}",
        "seed": self.seed,
        "note": "the most common test answer",
        "pass@1": share,
        "greedy": share,
    })
    weak = self._gold(
        "weak_teacher",
        "terse",
        _size(c, "weak"),
        int(steps.weak_teacher),
        fact_error_rate=float(w.weak_fact_error_rate),
        slip_prob=float(w.weak_slip_prob),
        error_seed=self.seed,
    )
    strong = self._gold(
        "strong_teacher", "terse", _size(c, "strong"), int(steps.strong_teacher)
    )
    latent = self._gold(
        "strong_student",
        "latent",
        _size(c, "strong"),
        int(steps.strong_student),
        split="pretrain",
    )
    self._latent = latent
    self._eval("base", "weak_teacher", "weak teacher", weak)
    self._eval("base", "strong_teacher", "strong teacher", strong)
    base = self._eval(
        "base",
        "student_base",
        "strong student, untrained (terse prompts)",
        latent,
    )
    self._eval(
        "base",
        "student_latent",
        "strong student, latent ceiling (own notation)",
        latent,
        style="latent",
    )
    sft = None
    if set(groups) & {"a", "c", "d"}:
      sft = self._arms_a(groups, latent, strong, base)
    if "b" in groups:
      self._rsd(strong)
    if "c" in groups:
      self._arms_c(sft)
    if "d" in groups:
      self._arms_d(sft, strong)
    return self.rows

  def _arms_a(self, groups, latent: str, strong: str, base) -> str:
    """W2SR and W2SR-P; returns the SFT stage of (c) and (d): W2SR-P, or
    W2SR when no weak trace is correct (``sft_note`` says so)."""
    c = self.c
    weak = st.export_dir(self.stages.path("weak_teacher"))
    weak_traces = self._sample("traces_weak", weak, pairs=True)
    sft_kw = dict(
        steps=int(c.steps.w2sr),
        lr=float(c.lr.sft),
        init=latent,
        arg=f"traces={weak_traces}",
    )
    serves = [g for g in ("c", "d") if g in groups]
    also = f"also the SFT start of ({', '.join(serves)})" if serves else ""
    w2sr = self._train("w2sr_all", "sft", **sft_kw)
    w2sr_row = self._eval("a", "w2sr", "W2SR: SFT on all weak traces", w2sr)
    if "a" in groups:
      grpo = self._rl(
          "a",
          "grpo_base",
          "GRPO on the untrained strong student (RGR reference)",
          "grpo",
          "",
          init=latent,
          teacher=strong,
      )
    arm = "W2SR-P: SFT on correct weak traces"
    if self._has_correct("a", "w2sr_p", arm, weak_traces):
      sft = self._train("w2sr_correct", "sft", data__filter="correct", **sft_kw)
      self._eval("a", "w2sr_p", arm, sft, note=also)
    else:
      # No positives at this size: (c) and (d) start from W2SR, and say so.
      sft, self.sft_note = w2sr, "started from W2SR (no W2SR-P at this size)"
      w2sr_row["note"] = also
    if "a" in groups:
      report.attach_rgr(
          self.rows,
          base,
          grpo,
          self.outcomes,
          min_gain=float(c.claims.rgr_min_gain),
      )
    return sft

  def _arms_c(self, sft: str | None) -> None:
    import jax  # noqa: PLC0415

    c = self.c
    arms = (("redi", "REDI"), ("dpo", "DPO"), ("simpo", "SimPO"))
    if sft is None:
      for mid, name in arms:
        self._not_run("c", mid, f"W2SR-P -> {name}", "not run: no W2SR-P")
      return
    pairs = os.path.join(self.stages.path("traces_weak"), "pairs.jsonl")
    with open(pairs) as f:
      num_pairs = sum(1 for line in f if line.strip())
    # A batch must split evenly over the devices and fit in the pair set.
    ndev = jax.device_count()
    batch = min(int(c.batch_size), num_pairs) // ndev * ndev
    for method, name in arms:
      arm = f"W2SR-P -> {name}"
      if batch < 1:
        self._not_run(
            "c",
            method,
            arm,
            f"not run: {num_pairs} pairs < one batch of {ndev}",
        )
        continue
      # The learning rate with the best validation score (first on ties).
      best = None
      for lr in c.lr_sweep[method]:
        out = self._train(
            f"{method}_lr{lr:g}",
            method,
            steps=int(c.steps.pref),
            lr=float(lr),
            init=sft,
            arg=f"pairs={pairs}",
            batch_override=batch,
        )
        score = self._val_score(f"{method}_lr{lr:g}", out)
        if best is None or score > best[0]:
          best = (score, lr, out)
      score, lr, out = best
      note = f"lr {lr:g} chosen on validation ({score:.3f})"
      self._eval("c", method, arm, out, note=_join(note, self.sft_note))

  def _rsd(self, strong: str) -> None:
    c, steps = self.c, self.c.steps
    small = self._gold(
        "small_student", "postfix", _size(c, "small"), int(steps.small_student)
    )
    self._eval("b", "small", "small student, before (postfix)", small)
    teacher_traces = self._sample("traces_strong", strong, k=1)
    rsd_traces = self._sample(
        "traces_rsd", strong, student=small, k=int(c.sample.rsd_k)
    )
    inputs = {"teacher": teacher_traces, "rsd": rsd_traces}
    matched = self.stages.run(
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
        self._not_run("b", mid, arm, "not run: no correct traces to match")
        continue
      path = os.path.join(self.stages.path("traces_matched"), f"{name}.jsonl")
      out = self._train(
          mid,
          "sft",
          steps=int(steps.rsd_sft),
          lr=float(c.lr.sft),
          init=small,
          arg=f"traces={path}",
          data__filter="correct",
      )
      self._eval("b", mid, arm, out, note=note)

  def _rl(
      self,
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
    c, rl = self.c, self.c.rl
    if not bool(c.run_rl):
      self._not_run(group, mid, arm, "not run (run_rl=False)")
      return None
    if not st.has_config(cfg_name):
      self._not_run(group, mid, arm, f"not run: configs/{cfg_name}.py missing")
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
      out = self._train(
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
      self._not_run(group, mid, arm, f"not run: {type(e).__name__}: {e}"[:200])
      return None
    note = self.sft_note if init != self._latent else ""
    return self._eval(group, mid, arm, out, note=note)

  def _arms_d(self, sft: str | None, strong: str) -> None:
    c, rl = self.c, self.c.rl
    if sft is None:
      for mid in D_ARMS:
        self._not_run("d", mid, f"W2SR-P -> {mid}", "not run: no W2SR-P")
      return
    teacher_traces = self._sample("traces_strong", strong, k=1)
    arm = "W2SR-P -> offline KD (forward KL)"
    if self._has_correct("d", "kd", arm, teacher_traces):
      kd = self._train(
          "kd",
          "distill",
          arg=f"traces={teacher_traces}",
          steps=int(c.steps.kd),
          lr=float(c.lr.sft),
          init=sft,
          teacher__hf_path=strong,
          data__filter="correct",
      )
      self._eval("d", "kd", arm, kd, note=self.sft_note)
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
      self._rl("d", mid, arm, cfg_name, arg, init=sft, teacher=strong, **keys)


def _join(*notes: str) -> str:
  return "; ".join(n for n in notes if n)


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


def check(config: Any) -> tuple[str, ...]:
  """Validates the study's arguments; returns the arm groups.

  Raises:
    ValueError: naming the argument (``arms``, ``seeds``, ``grading``).
  """
  groups = tuple(ch for ch in str(config.arms) if ch not in ", ")
  bad = sorted(set(groups) - set(ARM_GROUPS))
  if bad or not groups:
    raise ValueError(
        f"study arms={config.arms!r}: unknown arm group(s)"
        f" {''.join(bad) or '(none given)'}; give letters of"
        f" {''.join(ARM_GROUPS)}, e.g. --config=configs/study.py:arms=ac."
    )
  seeds = int(config.seeds)
  if seeds < 1:
    raise ValueError(
        f"study seeds={seeds}: must be >= 1, e.g."
        " --config=configs/study.py:seeds=5."
    )
  if str(config.grading) not in ("any", "strict"):
    raise ValueError(
        f"study grading={config.grading!r}: choose 'any' (an answer in any"
        " notation counts) or 'strict' (only the asked terse notation)."
    )
  return groups


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the study; writes and prints the results table."""
  groups = check(config)
  os.makedirs(workdir, exist_ok=True)
  _compilation_cache(workdir)
  start = time.time()

  def log(line: str) -> None:
    print(f"[study {time.time() - start:7.1f}s] {line}", flush=True)

  rows, outcomes, timings = [], [], {}
  for s in range(int(config.seeds)):
    seed_run = _Seed(config, workdir, s, log)
    rows.extend(seed_run.run(groups))
    outcomes.append(seed_run.outcomes)
    timings[f"seed{s}"] = seed_run.stages.timings
  result = report.write(workdir, rows, outcomes, config=config.to_dict())
  wall = time.time() - start
  report.write_timings(
      workdir, {"wall_seconds": wall, "stage_seconds": timings}
  )
  print(result["table"])
  print(result["claims_table"])
  print(
      f"\nSaved {workdir}/results.json, results.md, results.png,"
      f" timings.json ({wall:.0f}s)"
  )
  return {"wall_seconds": wall, "rows": float(len(rows))}
