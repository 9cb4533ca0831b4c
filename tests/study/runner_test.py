"""Tests of the study's runner: config arguments, workers, bad input, e2e.

The end-to-end test runs ``configs/study.py:quick`` through ``main.run_job``
(every arm, tiny models, mostly compiling), resumes it, rebuilds one stage
of each kind from scratch to check that a seed fixes every byte, and runs
in the default suite: it is the issues' end-to-end check.
"""

import json
import os
import shutil

import pytest

from w2s_jax import config_lib, study
from w2s_jax.study import runner
from w2s_jax.study import stages as st

CONFIG = os.path.join(
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ),
    "configs",
    "study.py",
)


def test_config_args():
  c = config_lib.load(CONFIG)
  assert (c.job, c.seeds, c.arms, c.run_rl) == ("study", 1, "abcd", True)
  q = config_lib.load(CONFIG + ":quick,seeds=3,arms=ac,rl=false")
  assert (q.seeds, q.arms, q.run_rl) == (3, "ac", False)
  assert q.steps.strong_student < c.steps.strong_student
  assert q.eval.num_problems < c.eval.num_problems
  with pytest.raises(ValueError, match="unknown config argument 'fast'"):
    config_lib.load(CONFIG + ":fast")


def test_num_workers():
  c = config_lib.load(CONFIG + ":seeds=3,workers=2")
  assert runner.num_workers(c) == 2
  c.workers = 0  # one per core
  assert runner.num_workers(c) == max(1, os.cpu_count() or 1)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("arms", "az", "arms='az': unknown arm group.s. z"),
        ("arms", "", "arms=''"),
        ("seeds", 0, "seeds=0: must be >= 1"),
        ("grading", "loose", "grading='loose'"),
        ("workers", -1, "workers=-1: must be >= 0"),
    ],
)
def test_run_rejects_bad_arguments(tmp_path, key, value, match):
  c = config_lib.load(CONFIG + ":tiny")
  c[key] = value
  with pytest.raises(ValueError, match=match):
    study.run(c, str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before anything is written


EXPECTED_IDS = [
    "chance",
    "weak_teacher",
    "strong_teacher",
    "student_base",
    "student_latent",
    "w2sr",
    "grpo_base",
    "w2sr_p",
    "small",
    "rsd_teacher",
    "rsd_teacher_sft",
    "rsd_sft",
    "redi",
    "dpo",
    "simpo",
    "kd",
    "grpo",
    "kdrl_const",
    "kdrl_anneal",
    "kd_rkl",
    "gkd_l0",
    "gkd_l1",
]
# Stages rebuilt from scratch in the determinism check (one of each kind:
# pretraining, RSD sampling, RL, evaluation) and a file each must reproduce.
REBUILT = {
    "weak_teacher": "export/model.safetensors",
    "traces_rsd": "traces.jsonl",
    "grpo": "export/model.safetensors",
    "eval_w2sr": "sampled/items.jsonl",
}


def test_quick_study_end_to_end_resume_and_determinism(tmp_path, capsys):
  from w2s_jax import main  # noqa: PLC0415

  workdir = str(tmp_path / "study")
  cfg = config_lib.load(CONFIG + ":quick")
  # The first run trains the base models in 2 processes; the rebuild below
  # is serial, so it also checks that both paths write the same bytes.
  cfg.workers = 2
  main.run_job(cfg, workdir)
  printed = capsys.readouterr().out
  assert "on 2 processes" in printed
  cfg.workers = 1
  path = lambda *p: os.path.join(workdir, *p)  # noqa: E731
  first = open(path("results.json"), "rb").read()
  data = json.loads(first)
  assert [e["id"] for e in data["rows"]] == EXPECTED_IDS
  for e in data["rows"]:
    if "pass@1" in e:
      assert 0.0 <= e["pass@1"]["mean"] <= 1.0
    else:  # an arm that could not run (RL, no correct traces) says why
      assert e["note"].startswith("not run"), e
  assert len(data["claims"]) == len(cfg.claims.specs)
  for c in data["claims"]:
    assert c["verdict"] in (
        "reproduces",
        "does not reproduce",
        "inconclusive",
        "not run",
    )
  md = open(path("results.md")).read()
  assert data["rows"] and md.split("\n\n")[0].strip() in printed
  assert os.path.getsize(path("results.png")) > 1000
  assert "wall_seconds" in json.load(open(path("timings.json")))
  # The any-notation score of a model is at least its terse-only score.
  for e in data["rows"]:
    if "pass@1_strict" in e:
      assert e["pass@1"]["mean"] >= e["pass@1_strict"]["mean"]
  # The per-problem file carries the grades the stage reports, per sample.
  result = json.load(open(path("seed0", "eval_w2sr", "DONE.json")))
  items = [
      json.loads(x)
      for x in open(path("seed0", "eval_w2sr", "sampled", "items.jsonl"))
  ]
  per = lambda k: [sum(map(float, r[k])) / len(r[k]) for r in items]  # noqa: E731
  assert per("correct_any") == pytest.approx(result["outcomes"])
  for key, col in (("step_acc", "step_accuracy"), ("format", "format_ok")):
    assert sum(per(col)) / len(items) == pytest.approx(result[key]), key
  # A rerun resumes: every stage is cached and results.json is unchanged.
  main.run_job(cfg, workdir)
  assert "running ..." not in capsys.readouterr().out
  assert open(path("results.json"), "rb").read() == first
  # Determinism: stages rebuilt from scratch give the same bytes.
  made = {}
  for stage, f in REBUILT.items():
    made[stage] = open(path("seed0", stage, f), "rb").read()
    shutil.rmtree(path("seed0", stage))
  os.remove(path("results.json"))
  main.run_job(cfg, workdir)
  out = capsys.readouterr().out
  for stage, f in REBUILT.items():
    assert f"[{stage}] running" in out
    assert open(path("seed0", stage, f), "rb").read() == made[stage], stage
  assert open(path("results.json"), "rb").read() == first
  # Another config in the same workdir: the stale stage is refused.
  cfg.steps.w2sr += 1
  with pytest.raises(st.StaleStageError, match="w2sr_all"):
    main.run_job(cfg, workdir)
