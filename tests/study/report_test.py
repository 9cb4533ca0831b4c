"""Tests of the study's report: aggregation, claims, RGR, notes, files."""

import json
import math
import os

import numpy as np
import pytest

from w2s_jax.study import report


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
