"""Tests of the weak-to-strong study: report maths, stage cache, config, e2e.

The end-to-end test runs ``configs/study.py:quick`` through ``main.run_job``
(every arm, tiny models, mostly compiling), resumes it, rebuilds one stage
of each kind from scratch to check that a seed fixes every byte, and runs
in the default suite: it is the issues' end-to-end check.
"""

import json
import math
import os
import shutil

import numpy as np
import pytest

from w2s_jax import config_lib, study
from w2s_jax.study import report, runner
from w2s_jax.study import stages as st

CONFIG = os.path.join(
    os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ),
    "configs",
    "study.py",
)


def _rows(values_by_arm):
  rows = []
  for arm, values in values_by_arm.items():
    for seed, (acc, step) in enumerate(values):
      rows.append({
          "group": "a",
          "id": arm,
          "arm": arm,
          "seed": seed,
          "note": "",
          "pass@1": acc,
          "step_acc": step,
      })
  return rows


def test_aggregate_mean_and_sample_std_match_numpy():
  rng = np.random.default_rng(0)
  vals = rng.uniform(size=(3, 2))
  entries = report.aggregate(_rows({"x": [tuple(v) for v in vals]}))
  (e,) = entries
  np.testing.assert_allclose(e["pass@1"]["mean"], vals[:, 0].mean())
  np.testing.assert_allclose(e["pass@1"]["std"], vals[:, 0].std(ddof=1))
  np.testing.assert_allclose(e["step_acc"]["std"], vals[:, 1].std(ddof=1))
  assert e["pass@1"]["n"] == 3 and e["seeds"] == [0, 1, 2]


def test_aggregate_keeps_first_seen_order_and_drops_nan():
  rows = _rows({"b": [(0.1, 0.2)], "a": [(0.3, 0.4)]})
  rows.append({"group": "a", "id": "b", "arm": "b", "seed": 1, "rgr": math.nan})
  rows.append({"group": "a", "id": "c", "arm": "c", "seed": 0, "note": "x"})
  entries = report.aggregate(rows)
  assert [e["id"] for e in entries] == ["b", "a", "c"]
  assert entries[0]["pass@1"] == {"mean": 0.1, "std": 0.0, "n": 1}
  assert "rgr" not in entries[0]
  assert "pass@1" not in entries[2] and entries[2]["note"] == "x"


def test_table_cells():
  rows = _rows({"one": [(0.5, 0.25)], "two": [(0.2, 0.0), (0.4, 0.0)]})
  rows.append(
      {"group": "d", "id": "g", "arm": "GRPO", "seed": 0, "note": "not run"}
  )
  md = report.table(report.aggregate(rows))
  lines = md.splitlines()
  assert lines[0].startswith("| group | model | answer acc (any notation)")
  assert "| (a) W2SR | one | 0.500 | – | – | – | 0.250 |" in lines[2]
  # Two seeds: mean ± sample std (0.3 ± 0.1414).
  assert "0.300 ± 0.141" in lines[3]
  assert lines[4].endswith("| not run |") and "(d) RL" in lines[4]


def test_attach_rgr_needs_a_grpo_gain():
  outcomes = {"base": [0.0] * 50 + [1.0] * 50, "grpo": [1.0] * 100}
  base = {"group": "base", "id": "base", "pass@1": 0.5}
  grpo = {"group": "a", "id": "grpo", "pass@1": 1.0}
  w2sr = {"group": "a", "id": "w2sr", "pass@1": 0.6}
  other = {"group": "c", "id": "redi", "pass@1": 0.7}
  report.attach_rgr(
      [base, w2sr, grpo, other], base, grpo, outcomes, min_gain=0.05
  )
  assert grpo["grpo_gain"] == pytest.approx(0.5)
  assert w2sr["rgr"] == pytest.approx((0.6 - 0.5) / 0.5)
  assert "rgr" not in grpo and "rgr" not in other
  # A GRPO that gains less than min_gain: RGR is undefined and says why.
  flat = {"group": "a", "id": "grpo", "pass@1": 0.51}
  outcomes["grpo"] = [0.0] * 49 + [1.0] * 51
  row = {"group": "a", "id": "w2sr", "pass@1": 0.6}
  report.attach_rgr([row], base, flat, outcomes, min_gain=0.05)
  assert "rgr" not in row and "RGR undefined" in row["note"]


def test_claims_use_paired_problems_and_the_written_direction():
  a = [0.0] * 80 + [1.0] * 20
  b = [1.0] * 60 + [0.0] * 20 + [1.0] * 20  # +0.6, every change upwards
  outcomes = [{"x": a, "y": b}, {"x": a, "y": b}]
  specs = [
      ("y beats x", "x", "y", 1, "paper"),
      ("x beats y", "y", "x", 1, "paper"),
      ("z beats x", "x", "z", 1, "paper"),
  ]
  up, down, missing = report.claims(specs, outcomes, min_effect=0.02)
  assert up["mean_diff"] == pytest.approx(0.6) and up["verdict"] == "reproduces"
  assert up["signs"]["agree"] == 2 and up["acc_a"] == [0.2, 0.2]
  assert down["verdict"] == "does not reproduce"
  assert missing["verdict"] == "not run"
  md = report.claims_table([up, missing], {"x": "X", "y": "Y"})
  assert "| y beats x | Y > X | +0.600 |" in md
  assert md.splitlines()[-1].endswith("| not run |")


def test_write_saves_json_markdown_and_png(tmp_path):
  rows = _rows({"x": [(0.5, 0.6), (0.7, 0.8)], "y": [(0.1, 0.1), (0.2, 0.2)]})
  outcomes = [{"x": [1.0, 0.0], "y": [0.0, 0.0]}] * 2
  config = {"claims": {"specs": [("x beats y", "y", "x", 1, "s")]}}
  out = report.write(str(tmp_path), rows, outcomes, config)
  data = json.loads((tmp_path / "results.json").read_text())
  assert data["rows"][0]["pass@1"]["mean"] == pytest.approx(0.6)
  assert len(data["per_seed"]) == 4 and data["claims"][0]["b"] == "x"
  assert out["table"] in (tmp_path / "results.md").read_text()
  first = (tmp_path / "results.png").read_bytes()
  assert first[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp_")]
  # The same inputs give the same bytes (no wall times, no timestamps).
  json_bytes = (tmp_path / "results.json").read_bytes()
  report.write(str(tmp_path), rows, outcomes, config)
  assert (tmp_path / "results.json").read_bytes() == json_bytes
  assert (tmp_path / "results.png").read_bytes() == first


def test_stages_cache_and_retry_after_failure(tmp_path):
  calls = []

  def ok(d):
    calls.append(d)
    return {"acc": 0.5}

  def boom(d):
    calls.append(d)
    raise RuntimeError("interrupted")

  stages = st.Stages(str(tmp_path), log=lambda line: None)
  first = stages.run("s", lambda d: {**ok(d), "time/step": 0.25})
  # Wall times go beside the result, not into it.
  assert "time/step" not in first
  timing = json.loads((tmp_path / "s" / "TIME.json").read_text())
  assert timing["time/step"] == 0.25 and timing["s"] >= 0
  again = st.Stages(str(tmp_path), log=lambda line: None).run("s", ok)
  assert len(calls) == 1 and again == first and first["acc"] == 0.5
  with pytest.raises(RuntimeError, match="interrupted"):
    stages.run("t", boom)
  assert not stages.done("t")  # no marker: a rerun runs it again
  assert stages.run("t", ok)["acc"] == 0.5 and len(calls) == 3


def test_stage_built_by_another_config_is_refused(tmp_path):
  stages = st.Stages(str(tmp_path), log=lambda line: None)
  stages.run("a", lambda d: {"v": 1.0}, key={"lr": 1.0})
  b_key = {"init": os.path.join(stages.path("a"), "export")}
  stages.run("b", lambda d: {"v": 2.0}, key=b_key)
  # Same keys in a new process: cached.
  again = st.Stages(str(tmp_path), log=lambda line: None)
  assert again.run("a", lambda d: {"v": 9.0}, key={"lr": 1.0})["v"] == 1.0
  assert again.run("b", lambda d: {"v": 9.0}, key=b_key)["v"] == 2.0
  # Another config for a: refused, naming the stage and the fix.
  other = st.Stages(str(tmp_path), log=lambda line: None)
  with pytest.raises(st.StaleStageError, match=r"stage '.*/a' .*fresh"):
    other.run("a", lambda d: {"v": 9.0}, key={"lr": 2.0})
  # b reads a: a's fingerprint is part of b's, so b's key alone is not enough.
  other.fingerprints["a"] = "changed"
  with pytest.raises(st.StaleStageError, match=r"stage '.*/b'"):
    other.run("b", lambda d: {"v": 9.0}, key=b_key)
  # The seed directory itself is not part of a fingerprint (a moved workdir).
  moved = st.Stages(str(tmp_path / "elsewhere"), log=lambda line: None)
  moved.fingerprints["a"] = again.fingerprints["a"]
  b_moved = {"init": os.path.join(moved.path("a"), "export")}
  assert moved.fingerprint(b_moved) == again.fingerprint(b_key)


def test_matched_traces_cut_to_one_count(tmp_path):
  def write(name, rows):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)

  t = write(
      "t",
      [
          {"prompt": "p1", "completion": "x", "correct": True},
          {"prompt": "p1", "completion": "y", "correct": True},  # 2nd of p1
          {"prompt": "p2", "completion": "z", "correct": False},
          {"prompt": "p3", "completion": "w", "correct": True},
          {"prompt": "p4", "completion": "v", "correct": True},
      ],
  )
  r = write("r", [{"prompt": "q", "completion": "a", "correct": True}] * 2)
  out = st.matched_traces({"teacher": t, "rsd": r}, str(tmp_path / "m"))
  assert out == {"count": 1.0, "available_teacher": 3.0, "available_rsd": 1.0}
  kept = (tmp_path / "m" / "teacher.jsonl").read_text().splitlines()
  assert [json.loads(x)["completion"] for x in kept] == ["x"]


def test_chance_is_the_most_common_answer():
  problems = [{"answer": a} for a in (3, 0, 0, 5, 3, 0)]
  assert st.chance(problems) == (0, 0.5)
  assert st.chance([{"answer": 2}, {"answer": 1}]) == (1, 0.5)  # tie: smaller


def test_set_keys_refuses_unknown_keys():
  c = st.load_config("sft")
  st.set_keys(c, train__steps=7, optim__lr=0.5)
  assert c.train.steps == 7 and c.optim.lr == 0.5
  with pytest.raises(KeyError, match="no key 'train.stepz'"):
    st.set_keys(c, train__stepz=1)
  with pytest.raises(KeyError, match="no section 'trian'"):
    st.set_keys(c, trian__steps=1)


def test_export_dir_missing_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="delete .* and rerun"):
    st.export_dir(str(tmp_path))


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


def test_notes_over_seeds_keep_each_seed_apart():
  rows = [
      {"seed": 0, "note": "also the SFT start of (c, d); lr 1e-05 chosen"},
      {"seed": 1, "note": "also the SFT start of (c, d); lr 3e-05 chosen"},
  ]
  assert report._seed_notes(rows) == (
      "also the SFT start of (c, d); seed 0: lr 1e-05 chosen;"
      " seed 1: lr 3e-05 chosen"
  )
  assert report._seed_notes(rows[:1]) == rows[0]["note"]
