"""Tests of the weak-to-strong study: report maths, stage cache, config, e2e.

The end-to-end test runs ``configs/study.py:quick`` through ``main.run_job``
(every arm, tiny models; about 100 s on 2 CPU cores, mostly compiling) and
runs in the default suite: it is the issue's end-to-end check.
"""

import json
import math
import os

import numpy as np
import pytest

from w2s_jax import config_lib, study, study_report
from w2s_jax import study_stages as st

CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "study.py",
)


def _rows(values_by_arm):
  rows = []
  for arm, values in values_by_arm.items():
    for seed, (acc, step) in enumerate(values):
      rows.append({
          "group": "a",
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
  entries = study_report.aggregate(_rows({"x": [tuple(v) for v in vals]}))
  (e,) = entries
  np.testing.assert_allclose(e["pass@1"]["mean"], vals[:, 0].mean())
  np.testing.assert_allclose(e["pass@1"]["std"], vals[:, 0].std(ddof=1))
  np.testing.assert_allclose(e["step_acc"]["std"], vals[:, 1].std(ddof=1))
  assert e["pass@1"]["n"] == 3 and e["seeds"] == [0, 1, 2]


def test_aggregate_keeps_first_seen_order_and_drops_nan():
  rows = _rows({"b": [(0.1, 0.2)], "a": [(0.3, 0.4)]})
  rows.append({"group": "a", "arm": "b", "seed": 1, "pass@1": math.nan})
  rows.append({"group": "a", "arm": "c", "seed": 0, "note": "not run: x"})
  entries = study_report.aggregate(rows)
  assert [e["arm"] for e in entries] == ["b", "a", "c"]
  assert entries[0]["pass@1"] == {"mean": 0.1, "std": 0.0, "n": 1}
  assert "pass@1" not in entries[2] and entries[2]["note"] == "not run: x"


def test_table_cells():
  rows = _rows({"one": [(0.5, 0.25)], "two": [(0.2, 0.0), (0.4, 0.0)]})
  rows.append({"group": "d", "arm": "GRPO", "seed": 0, "note": "not run"})
  md = study_report.table(study_report.aggregate(rows))
  lines = md.splitlines()
  assert lines[0].startswith("| group | arm | answer acc (pass@1)")
  assert "| (a) W2SR | one | 0.500 | – | 0.250 |" in lines[2]
  # Two seeds: mean ± sample std (0.3 ± 0.1414).
  assert "0.300 ± 0.141" in lines[3]
  assert lines[4].endswith("| not run |") and "(d) RL" in lines[4]


def test_attach_rgr_matches_the_definition():
  base = {"group": "base", "pass@1": 0.1}
  ceiling = {"group": "base", "pass@1": 0.9}
  grpo = {"group": "a", "arm": "GRPO", "pass@1": 0.5}
  w2sr = {"group": "a", "arm": "W2SR", "pass@1": 0.3}
  other = {"group": "c", "arm": "REDI", "pass@1": 0.7}
  rows = [base, ceiling, w2sr, grpo, other]
  study_report.attach_rgr(rows, base, ceiling, grpo)
  assert w2sr["rgr_vs_grpo"] == pytest.approx((0.3 - 0.1) / (0.5 - 0.1))
  assert w2sr["rgr_vs_latent_ceiling"] == pytest.approx(0.2 / 0.8)
  assert "rgr_vs_grpo" not in grpo and "rgr_vs_grpo" not in other
  # GRPO that closed no gap: undefined, not a division error.
  flat = {"group": "a", "pass@1": 0.1}
  row = {"group": "a", "pass@1": 0.3}
  study_report.attach_rgr([row], base, None, flat)
  assert math.isnan(row["rgr_vs_grpo"]) and "rgr_vs_latent_ceiling" not in row


def test_write_saves_json_markdown_and_png(tmp_path):
  rows = _rows({"x": [(0.5, 0.6), (0.7, 0.8)]})
  out = study_report.write(str(tmp_path), rows, meta={"wall_seconds": 1.0})
  data = json.loads((tmp_path / "results.json").read_text())
  assert data["rows"][0]["pass@1"]["mean"] == pytest.approx(0.6)
  assert len(data["per_seed"]) == 2 and data["meta"]["wall_seconds"] == 1.0
  assert (tmp_path / "results.md").read_text().strip() == out["table"]
  assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp_")]


def test_stages_cache_and_retry_after_failure(tmp_path):
  calls = []

  def ok(d):
    calls.append(d)
    return {"acc": 0.5}

  def boom(d):
    calls.append(d)
    raise RuntimeError("interrupted")

  stages = st.Stages(str(tmp_path), log=lambda line: None)
  first = stages.run("s", ok)
  again = st.Stages(str(tmp_path), log=lambda line: None).run("s", ok)
  assert len(calls) == 1 and again == first and first["acc"] == 0.5
  with pytest.raises(RuntimeError, match="interrupted"):
    stages.run("t", boom)
  assert not stages.done("t")  # no marker: a rerun runs it again
  assert stages.run("t", ok)["acc"] == 0.5 and len(calls) == 3


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


@pytest.mark.parametrize(
    "arms,seeds,match",
    [("az", 1, "arms='az'"), ("", 1, "arms=''"), ("ab", 0, "seeds=0")],
)
def test_run_rejects_bad_arguments(tmp_path, arms, seeds, match):
  c = config_lib.load(CONFIG + ":tiny")
  c.arms, c.seeds = arms, seeds
  with pytest.raises(ValueError, match=match):
    study.run(c, str(tmp_path))


EXPECTED_ARMS = [
    ("base", "weak teacher"),
    ("base", "strong teacher"),
    ("base", "strong student, untrained (terse)"),
    ("base", "strong student, latent ceiling (own format)"),
    ("a", "W2SR: SFT on all weak traces"),
    ("c", "SFT only (the W2SR stage)"),
    ("d", "SFT (start)"),
    ("a", "W2SR-P: SFT on correct weak traces"),
    ("a", "GRPO on the untrained strong student (RGR reference)"),
    ("b", "small student, before (postfix)"),
    ("b", "SFT on strong-teacher traces"),
    ("b", "SFT on RSD traces"),
    ("c", "SFT -> REDI"),
    ("c", "SFT -> DPO"),
    ("c", "SFT -> SimPO"),
    ("d", "KD (offline, forward KL)"),
    ("d", "GRPO"),
    ("d", "KDRL, constant beta"),
    ("d", "KDRL, annealed beta"),
    ("d", "GKD, lambda=0"),
    ("d", "GKD, lambda=1"),
]


def test_quick_study_end_to_end_and_resume(tmp_path, capsys):
  from w2s_jax import main  # noqa: PLC0415

  workdir = str(tmp_path / "study")
  cfg = config_lib.load(CONFIG + ":quick")
  main.run_job(cfg, workdir)
  printed = capsys.readouterr().out
  data = json.loads(open(os.path.join(workdir, "results.json")).read())
  got = [(e["group"], e["arm"]) for e in data["rows"]]
  assert got == EXPECTED_ARMS
  for e in data["rows"]:
    if "pass@1" in e:
      assert 0.0 <= e["pass@1"]["mean"] <= 1.0
    else:  # an arm that could not run (RL, no correct traces) says why
      assert e["note"].startswith("not run"), e
  md = open(os.path.join(workdir, "results.md")).read()
  assert md.strip() in printed
  assert os.path.getsize(os.path.join(workdir, "results.png")) > 1000
  # RGR against the latent ceiling, recomputed from the per-seed rows.
  per = {r["arm"]: r for r in data["per_seed"]}
  base = per["strong student, untrained (terse)"]["pass@1"]
  ceil = per["strong student, latent ceiling (own format)"]["pass@1"]
  w2sr = per["W2SR: SFT on all weak traces"]
  if abs(ceil - base) > 1e-12:
    assert w2sr["rgr_vs_latent_ceiling"] == pytest.approx(
        (w2sr["pass@1"] - base) / (ceil - base)
    )
  # A rerun resumes: every stage is cached and the table is unchanged.
  main.run_job(cfg, workdir)
  assert "running ..." not in capsys.readouterr().out
  again = json.loads(open(os.path.join(workdir, "results.json")).read())
  assert again["rows"] == data["rows"]
