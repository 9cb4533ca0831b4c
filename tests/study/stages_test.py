"""Tests of the study's stages: cache, fingerprints, traces, configs."""

import json
import os

import pytest

from w2s_jax.study import stages as st


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
