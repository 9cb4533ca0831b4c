"""metrics.jsonl: one row per step after resumes."""

import json

from w2s_jax.training import metrics


def _write(path, steps, torn=False):
  with open(path, "w") as f:
    for s in steps:
      f.write(json.dumps({"step": s, "train/loss": float(s)}) + "\n")
    if torn:
      f.write('{"step": 9, "train/lo')


def test_resume_drops_rows_after_the_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write(path, [1, 2, 3, 4, 5], torn=True)
  w = metrics.MetricWriter(str(tmp_path), tensorboard=False, start_step=3)
  for s in (4, 5, 6):
    w.write(s, {"train/loss": float(s) + 0.5})
  w.close()
  rows = metrics.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r["train/loss"] for r in rows] == [1.0, 2.0, 3.0, 4.5, 5.5, 6.5]


def test_truncate_leaves_a_clean_file_untouched(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write(path, [1, 2])
  before = path.stat().st_ino
  assert metrics.truncate_after(str(path), 2) == 0
  assert path.stat().st_ino == before  # not rewritten
  assert metrics.truncate_after(str(path), 0) == 2
  assert path.read_text() == ""
  assert metrics.truncate_after(str(tmp_path / "absent.jsonl"), 0) == 0
