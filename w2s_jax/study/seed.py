"""One seed of the study: its base models, stages and evaluation rows.

``Seed.run`` trains (or reuses) the world's base models and evaluates them,
then runs the arm groups of ``w2s_jax.study.arms``; every stage is cached
under ``<workdir>/seed<s>/<stage>`` with a fingerprint of its config.
"""

from __future__ import annotations

import os
from typing import Any

from w2s_jax.study import arms, report
from w2s_jax.study import stages as st


def _task_keys(config: Any) -> dict[str, Any]:
  t = config.task
  return dict(
      modulus=int(t.modulus),
      ops=str(t.ops),
      steps=int(t.steps),
      distractors=int(t.distractors),
  )


def size(config: Any, role: str) -> tuple[int, int]:
  """``(d_model, num_layers)`` of a model role of ``config.models``."""
  m = config.models[role]
  return int(m.d_model), int(m.num_layers)


class Seed:
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

  def train(self, name: str, cfg_name: str, **kw) -> str:
    """A training stage; returns its export directory."""
    return self._run_training(name, self.train_config(cfg_name, **kw))

  def _run_training(self, name: str, cfg) -> str:
    st.job_stage(self.stages, name, cfg)
    return st.export_dir(self.stages.path(name))

  def train_config(self, cfg_name: str, **kw):
    """The config of a training stage of this seed."""
    batch = int(kw.pop("batch_override", 0) or self.c.batch_size)
    cfg = st.train_config(cfg_name, seed=self.seed, batch_size=batch, **kw)
    # The synthetic task's knobs live in the data section of every
    # training config; keep them in step with the study's task.
    for k, v in self.task.items():
      if k in cfg.data:
        cfg.data[k] = v
    return cfg

  def base_models(self) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """The world's base models: stage -> (model role, style, data keys).

    Each is trained from scratch on the task's traces in its style(s) for
    ``steps[<stage>]`` steps (see runner.py for what each is for).
    """
    w = self.c.world
    return {
        "weak_teacher": (
            "weak",
            "terse",
            dict(
                fact_error_rate=float(w.weak_fact_error_rate),
                slip_prob=float(w.weak_slip_prob),
                error_seed=self.seed,
            ),
        ),
        "strong_teacher": ("strong", "terse", {}),
        "strong_student": ("strong", "latent", dict(split="pretrain")),
        "small_student": ("small", "postfix", {}),
        "rsd_teacher": ("rsd_teacher", str(w.rsd_teacher_styles), {}),
    }

  def base_config(self, name: str):
    role, style, data = self.base_models()[name]
    return self.train_config(
        "sft",
        steps=int(self.c.steps[name]),
        lr=float(self.c.lr.pretrain),
        size=size(self.c, role),
        data__style=style,
        data__num_examples=int(self.c.num_examples),
        optim__warmup_frac=0.05,
        **{f"data__{k}": v for k, v in data.items()},
    )

  def gold(self, name: str) -> str:
    """A base model (a cached stage); returns its export directory."""
    return self._run_training(name, self.base_config(name))

  def pretrain(self, names, workers: int) -> None:
    """Trains the base models ``names`` in ``workers`` processes at once.

    They are independent stages, so this only fills the cache that
    ``gold`` then reads; each stage's result and fingerprint are what the
    serial path would write.
    """
    todo = [n for n in names if not self.stages.done(n)]
    if workers < 2 or len(todo) < 2:
      return
    import jax  # noqa: PLC0415

    cache = jax.config.jax_compilation_cache_dir
    self.stages.log(f"training {', '.join(todo)} on {workers} processes")
    with st.process_pool(min(workers, len(todo))) as ex:
      futures = {
          n: ex.submit(
              _build_stage, self.stages.root, n, self.base_config(n), cache
          )
          for n in todo
      }
      for n, f in futures.items():
        self.stages.timings[n] = f.result()

  def sample(self, name: str, teacher: str, student: str = "", **kw) -> str:
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
    st.job_stage(self.stages, name, cfg)
    return os.path.join(self.stages.path(name), "traces.jsonl")

  def evaluate(
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

  def eval_row(
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
    res = self.evaluate(
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

  def val_score(self, mid: str, model_dir: str) -> float:
    """Validation answer accuracy (sampled, any notation): for choices."""
    return float(
        self.evaluate(f"val_{mid}", model_dir, self.val, "terse", False)[
            "pass@1"
        ]
    )

  def has_correct(self, group: str, mid: str, arm: str, path: str) -> bool:
    """Whether a trace file has a correct trace; else a 'not run' row."""
    from w2s_jax.data import traces  # noqa: PLC0415

    records = traces.read_sft(path).records
    if any(r.correct for r in records):
      return True
    self.not_run(
        group,
        mid,
        arm,
        f"not run: 0 of {len(records)} traces correct (teacher too weak at"
        " this size)",
    )
    return False

  def not_run(self, group: str, mid: str, arm: str, why: str) -> None:
    self.rows.append(
        {"group": group, "id": mid, "arm": arm, "seed": self.seed, "note": why}
    )

  # -- the study -------------------------------------------------------------

  def run(
      self, groups: tuple[str, ...], workers: int = 1
  ) -> list[dict[str, Any]]:
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
    names = ["weak_teacher", "strong_teacher", "strong_student"]
    if "b" in groups:
      names += ["small_student", "rsd_teacher"]
    self.pretrain(names, workers)
    weak = self.gold("weak_teacher")
    strong = self.gold("strong_teacher")
    latent = self.gold("strong_student")
    self.latent = latent
    self.eval_row("base", "weak_teacher", "weak teacher", weak)
    self.eval_row("base", "strong_teacher", "strong teacher", strong)
    base = self.eval_row(
        "base",
        "student_base",
        "strong student, untrained (terse prompts)",
        latent,
    )
    self.eval_row(
        "base",
        "student_latent",
        "strong student, latent ceiling (own notation)",
        latent,
        style="latent",
    )
    sft = None
    if set(groups) & {"a", "c", "d"}:
      sft = arms.w2sr(self, groups, latent, strong, base)
    if "b" in groups:
      arms.rsd(self)
    if "c" in groups:
      arms.preference(self, sft)
    if "d" in groups:
      arms.rl_and_distill(self, sft, strong)
    return self.rows


def _build_stage(root: str, name: str, cfg, cache_dir) -> float:
  """One training stage in a worker process; returns its seconds."""
  st.compilation_cache(cache_dir)
  stages = st.Stages(root, lambda line: print(f"[pretrain] {line}", flush=True))
  st.job_stage(stages, name, cfg)
  return stages.timings[name]
