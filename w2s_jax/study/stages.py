"""The study's cached stages: train, sample, pairs and eval, each resumable.

A stage is a directory ``<workdir>/seed<s>/<name>`` that holds its job's
outputs and, once it finished, ``DONE.json`` (written atomically: a temp
file renamed into place) with the stage's result and its fingerprint: a
hash of the stage's config and of the fingerprints of the stages it reads
(any path under the seed directory that the config names). A rerun returns
the cached result of a finished stage whose fingerprint matches; a cached
stage built by another config is refused with an error naming it (never
silently reused); an unfinished training stage resumes from its last
checkpoint (the trainer's own resume).

Every training stage goes through ``main.run_job`` with a config loaded from
``configs/<name>.py`` and edited with ``set_keys`` (which refuses keys the
config does not have, so a typo fails instead of being ignored).

Models are described by a ``(d_model, num_layers)`` pair; heads, head dim
and MLP width follow from ``d_model`` (``model_overrides``).

Shape legend: none (host-side orchestration only).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from w2s_jax import config_lib

DONE = "DONE.json"


def configs_dir() -> str:
  """``configs/`` beside the package, else in the working directory."""
  here = os.path.dirname(os.path.abspath(__file__))
  for cand in (
      os.path.join(os.path.dirname(here), "configs"),
      os.path.join(os.getcwd(), "configs"),
  ):
    if os.path.isfile(os.path.join(cand, "sft.py")):
      return cand
  raise FileNotFoundError(
      "configs/ (with sft.py) not found next to the w2s_jax package or in"
      " the working directory; run from the repository root."
  )


def has_config(name: str) -> bool:
  """Whether ``configs/<name>.py`` exists (the RL configs may not yet)."""
  return os.path.isfile(os.path.join(configs_dir(), f"{name}.py"))


def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """``configs/<name>.py[:arg]`` as an unlocked ConfigDict."""
  spec = os.path.join(configs_dir(), f"{name}.py")
  return config_lib.load(spec + (f":{arg}" if arg else ""))


def set_keys(cfg: ml_collections.ConfigDict, **dotted: Any) -> None:
  """Sets ``a__b__c=v`` as ``cfg.a.b.c = v`` (double underscores stand for
  dots so that keys read as Python names); unknown keys raise."""
  config_lib.set_keys(cfg, {k.replace("__", "."): v for k, v in dotted.items()})


def model_overrides(d_model: int, num_layers: int) -> dict[str, int]:
  """A small transformer of width ``d_model`` (4 heads, 2 KV heads)."""
  if d_model % 4:
    raise ValueError(f"d_model={d_model} must be divisible by 4 (4 heads).")
  return dict(
      d_model=d_model,
      num_heads=4,
      num_kv_heads=2,
      head_dim=d_model // 4,
      mlp_dim=4 * d_model,
      num_layers=num_layers,
      max_len=64,
  )


def _atomic_json(path: str, obj: Any) -> None:
  d = os.path.dirname(path)
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def compilation_cache(cache_dir: str) -> None:
  """A persistent XLA cache in ``cache_dir``, unless one is configured.

  Most stages are small, so compiling dominates them; stages with the same
  architecture and shapes (the SFT arms, the evaluations, a rerun, other
  processes of the same study) then reuse each other's executables.
  """
  import jax  # noqa: PLC0415

  if cache_dir and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def process_pool(workers: int):
  """A pool of ``workers`` spawned processes (no forked JAX state)."""
  import concurrent.futures  # noqa: PLC0415
  import multiprocessing  # noqa: PLC0415

  ctx = multiprocessing.get_context("spawn")
  return concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)


class StaleStageError(ValueError):
  """A cached stage was built by a different config than the one asked."""


class Stages:
  """Runs named stages under one directory, caching each one's result.

  Attributes:
    root: the directory (``<workdir>/seed<s>``).
    log: ``(line) -> None`` for the one-line stage log.
    timings: seconds spent per stage in this process (cached stages: 0).
    fingerprints: each stage's fingerprint, once run or loaded.
  """

  def __init__(self, root: str, log: Callable[[str], None] = print):
    self.root = root
    self.log = log
    self.timings: dict[str, float] = {}
    self.fingerprints: dict[str, str] = {}
    os.makedirs(root, exist_ok=True)

  def fingerprint(self, key: Any) -> str:
    """Hash of ``key`` (JSON) and of the stages whose paths it names.

    The seed directory is replaced by a placeholder, so a moved workdir
    keeps its cache; a stage read by this one contributes its own
    fingerprint, so a rebuilt input invalidates everything downstream.
    """
    text = json.dumps(key, sort_keys=True, default=str)
    deps = {
        name: fp
        for name, fp in self.fingerprints.items()
        if any(self.path(name) + end in text for end in ("/", '"', ","))
    }
    text = text.replace(self.root, "<seed_dir>")
    payload = json.dumps([text, sorted(deps.items())])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

  def path(self, name: str) -> str:
    return os.path.join(self.root, name)

  def done(self, name: str) -> bool:
    return os.path.isfile(os.path.join(self.path(name), DONE))

  def result(self, name: str) -> dict[str, Any]:
    with open(os.path.join(self.path(name), DONE)) as f:
      return json.load(f)

  def run(
      self,
      name: str,
      fn: Callable[[str], Mapping[str, Any] | None],
      key: Any = None,
  ) -> dict[str, Any]:
    """Runs ``fn(stage_dir)`` once; later calls return the cached result.

    Args:
      name: the stage (its directory under ``root``).
      fn: builds the stage in the given directory; returns its result.
      key: what the stage is a function of (its config); JSON-able.

    Raises:
      StaleStageError: the stage is cached with another fingerprint.
    """
    fp = self.fingerprint(key)
    if self.done(name):
      out = self.result(name)
      if out.get("fingerprint") != fp:
        raise StaleStageError(
            f"cached stage {self.path(name)!r} was built by another config"
            f" (fingerprint {out.get('fingerprint')} != {fp}): rerun with a"
            " fresh --workdir, or delete that directory (and the stages"
            " after it) to rebuild it."
        )
      self.log(f"[{name}] cached")
      self.timings.setdefault(name, 0.0)
      self.fingerprints[name] = fp
      return out
    start = time.time()
    self.log(f"[{name}] running ...")
    out = dict(fn(self.path(name)) or {})
    seconds = time.time() - start
    out["fingerprint"] = fp
    # Wall times live beside the result, never in it: a stage's result is a
    # function of its config (a job's own ``time/*`` metrics move too).
    times = {k: out.pop(k) for k in sorted(out) if k.startswith("time/")}
    _atomic_json(
        os.path.join(self.path(name), "TIME.json"), {"s": seconds, **times}
    )
    _atomic_json(os.path.join(self.path(name), DONE), out)
    self.timings[name] = seconds
    self.fingerprints[name] = fp
    self.log(f"[{name}] done in {seconds:.1f}s")
    return out


def export_dir(stage_dir: str) -> str:
  """The HF export a training stage leaves behind."""
  path = os.path.join(stage_dir, "export")
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"{path!r} is missing: the training stage did not export; delete"
        f" {stage_dir!r} and rerun the study."
    )
  return path


def job_stage(
    stages: Stages, name: str, cfg: ml_collections.ConfigDict
) -> dict[str, Any]:
  """A job (training, sampling) as a cached stage keyed by its config."""
  return stages.run(name, lambda d: run_job(cfg, d), key=cfg.to_dict())


def run_job(cfg: ml_collections.ConfigDict, stage_dir: str) -> dict[str, Any]:
  """``main.run_job``'s dispatch on a locked, validated copy of ``cfg``.

  ``w2s_jax.main`` itself is not imported: under ``python -m w2s_jax.main``
  it is ``__main__``, and a second import would define its flags twice.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.lock()
  config_lib.validate(cfg)
  out = _dispatch(cfg, stage_dir)
  return {
      k: float(v) for k, v in (out or {}).items() if isinstance(v, (int, float))
  }


def _dispatch(cfg: ml_collections.ConfigDict, stage_dir: str) -> Any:
  from w2s_jax import jobs  # noqa: PLC0415

  return jobs.run(str(cfg.get("job", "train")), cfg, stage_dir)


def train_config(
    name: str,
    *,
    seed: int,
    steps: int,
    lr: float,
    batch_size: int,
    arg: str = "",
    init: str = "",
    size: tuple[int, int] | None = None,
    **keys: Any,
) -> ml_collections.ConfigDict:
  """A training config from ``configs/<name>.py`` for one study stage.

  Args:
    name: config file stem (sft, distill, redi, dpo, simpo, grpo, ...).
    seed: run seed (data order, init of a fresh model).
    steps, lr, batch_size: the schedule.
    arg: the config's ``get_config`` argument.
    init: start the student from this HF export ('' = fresh init).
    size: ``(d_model, num_layers)`` of a fresh student.
    **keys: further ``set_keys`` overrides.
  """
  c = load_config(name, arg)
  set_keys(
      c,
      seed=seed,
      train__steps=steps,
      train__batch_size=batch_size,
      train__save_every=max(steps, 1),
      train__log_every=max(steps // 4, 1),
      train__tensorboard=False,
      optim__lr=lr,
      data__max_len=32,
      student__seed=seed,
  )
  if init:
    set_keys(c, student__hf_path=init)
  elif size is not None:
    for k, v in model_overrides(*size).items():
      c.student.overrides[k] = v
  set_keys(c, **keys)
  return c


def sample_config(
    *,
    seed: int,
    teacher: str,
    num_problems: int,
    k: int,
    temperature: float,
    student: str = "",
    pairs: bool = False,
) -> ml_collections.ConfigDict:
  """``configs/sample.py`` for traces of ``teacher`` (RSD with ``student``)."""
  arg = "rsd" if student else ""
  c = load_config("sample", arg)
  set_keys(
      c,
      seed=seed,
      teacher__hf_path=teacher,
      student__hf_path=student,
      data__tokenizer="char",
      sample__num_problems=num_problems,
      sample__num_samples=k,
      sample__temperature=temperature,
      sample__pairs=pairs,
      sample__seed=0,  # the train problems are fixed; seeds vary models
  )
  return c


def evaluate_export(
    model_dir: str,
    out_dir: str,
    problems: list[dict[str, Any]],
    *,
    n: int,
    temperature: float,
    greedy: bool,
    seed: int,
    style: str = "terse",
) -> dict[str, Any]:
  """Skill (any notation) and format (the asked one) of a model, per problem.

  Returns:
    ``pass@1`` (answer right in any notation of the task, mean over ``n``
    samples and problems), ``pass@1_strict`` (right in ``style``'s
    notation), ``format`` (share of samples exactly in ``style``'s format),
    ``step_acc`` (local step accuracy in the best-fitting notation),
    ``greedy`` (any notation, when asked), and ``outcomes`` /
    ``greedy_outcomes``: per-problem any-notation scores in ``problems``'
    order, for paired comparisons.

  Each ``items.jsonl`` row (``sampled/``, ``greedy/``) keeps the evaluator's
  ``correct`` and ``answers`` (the asked notation) and adds the study's
  per-sample grades: ``correct_any``, ``format_ok`` and ``step_accuracy``
  (replaced: in the best-fitting notation, as ``step_acc``).
  """
  import numpy as np  # noqa: PLC0415

  from w2s_jax import models  # noqa: PLC0415
  from w2s_jax.data import synthetic  # noqa: PLC0415
  from w2s_jax.evals import evaluate  # noqa: PLC0415
  from w2s_jax.training import inputs  # noqa: PLC0415

  tok = inputs.load_tokenizer("char", out_dir)
  model = models.load_pretrained(model_dir)
  common = dict(
      task="synthetic",
      fmt="raw",
      style=style,
      max_new_tokens=24,
      batch_size=max(len(problems), 1),
      progress=False,
  )

  def graded(rows) -> dict[str, list[float]]:
    cols: dict[str, list[float]] = {
        "any": [],
        "strict": [],
        "format": [],
        "step": [],
    }
    for r in rows:
      p = synthetic.Problem.from_spec(r["id"])
      texts = r["completions"]
      per = {
          "any": [synthetic.grade(p, t, style, "any") for t in texts],
          "strict": [synthetic.grade(p, t, style) for t in texts],
          "format": [synthetic.format_ok(t, style, p.num_steps) for t in texts],
          "step": [synthetic.best_step_accuracy(p, t) for t in texts],
      }
      for k, v in per.items():
        cols[k].append(float(np.mean(v)))
      # The per-problem file shows the grades the study reports.
      r["correct_any"] = [bool(x) for x in per["any"]]
      r["format_ok"] = [bool(x) for x in per["format"]]
      r["step_accuracy"] = per["step"]
    return cols

  _, rows = evaluate.evaluate(
      model, tok, problems, n=n, temperature=temperature, seed=seed, **common
  )
  cols = graded(rows)
  evaluate.write_results(
      os.path.join(out_dir, "sampled"), evaluate.summarize(rows, [1]), rows
  )
  out: dict[str, Any] = {
      "pass@1": float(np.mean(cols["any"])),
      "pass@1_strict": float(np.mean(cols["strict"])),
      "format": float(np.mean(cols["format"])),
      "step_acc": float(np.mean(cols["step"])),
      "n": float(n),
      "num_problems": float(len(problems)),
      "outcomes": cols["any"],
  }
  if greedy:
    _, g_rows = evaluate.evaluate(
        model, tok, problems, n=1, temperature=0.0, seed=seed, **common
    )
    g = graded(g_rows)
    evaluate.write_results(
        os.path.join(out_dir, "greedy"), evaluate.summarize(g_rows, [1]), g_rows
    )
    out["greedy"] = float(np.mean(g["any"]))
    out["greedy_outcomes"] = g["any"]
  return out


def held_out_problems(
    task_keys: Mapping[str, Any],
    n: int,
    style: str = "terse",
    split: str = "test",
) -> list[dict[str, Any]]:
  """Held-out problems (fixed across seeds) with prompts in ``style``.

  ``split`` is ``test`` (reported) or ``val`` (choices: learning rates).
  """
  from w2s_jax.data import synthetic  # noqa: PLC0415

  if split not in ("test", "val"):
    raise ValueError(f"split={split!r}: held-out problems are test or val.")
  task = synthetic.TaskConfig(**dict(task_keys))
  return [
      {
          "id": p.spec,
          "spec": p.spec,
          "question": synthetic.prompt(p, style),
          "answer": p.answer,
      }
      for p in synthetic.sample_problems(task, split, n, seed=0)
  ]


def chance(problems: list[dict[str, Any]]) -> tuple[int, float]:
  """The most common answer of ``problems`` and the share it gets right:
  what always answering one number scores (chance level)."""
  counts: dict[int, int] = {}
  for p in problems:
    counts[int(p["answer"])] = counts.get(int(p["answer"]), 0) + 1
  answer = max(sorted(counts), key=lambda a: counts[a])
  return answer, counts[answer] / max(len(problems), 1)


def matched_traces(paths: Mapping[str, str], out_dir: str) -> dict[str, float]:
  """Correct traces of several files cut to one count, one per problem.

  Each input keeps its correct traces, at most one per problem (the first);
  every output ``<out_dir>/<name>.jsonl`` then holds the first ``N`` of
  them, ``N`` the smallest count, so SFT on any of them sees as many traces
  for as many epochs.

  Returns:
    ``{count, available_<name>}``.
  """
  kept: dict[str, list[str]] = {}
  for name, path in paths.items():
    seen, lines = set(), []
    with open(path) as f:
      for line in f:
        if not line.strip():
          continue
        rec = json.loads(line)
        if rec.get("correct") and rec.get("prompt") not in seen:
          seen.add(rec.get("prompt"))
          lines.append(line if line.endswith("\n") else line + "\n")
    kept[name] = lines
  count = min((len(v) for v in kept.values()), default=0)
  os.makedirs(out_dir, exist_ok=True)
  for name, lines in kept.items():
    _atomic_text(os.path.join(out_dir, f"{name}.jsonl"), "".join(lines[:count]))
  out = {"count": float(count)}
  out.update({f"available_{k}": float(len(v)) for k, v in kept.items()})
  return out


def _atomic_text(path: str, text: str) -> None:
  d = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
