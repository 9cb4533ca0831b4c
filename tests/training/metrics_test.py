"""metrics.jsonl: one row per step after resumes."""

import json
import os
import struct

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


def _events(path):
  """The Event protos of one TFRecord event file."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  with open(path, "rb") as f:
    data = f.read()
  out = []
  pos = 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos : pos + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[pos + 12 : pos + 12 + n])
    out.append(event)
    pos += 12 + n + 4
  return out


def test_tensorboard_purges_events_past_the_restored_step(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), tensorboard=True, start_step=2)
  w.write(3, {"train/loss": 3.5})
  w.close()
  (name,) = os.listdir(tmp_path / "tb")
  events = _events(tmp_path / "tb" / name)
  # TensorBoard drops the older events with step >= a START marker's step.
  starts = [e.step for e in events if e.session_log.status == 1]
  assert starts == [3]
  assert [(e.step, e.summary.value[0].simple_value) for e in events if
          e.summary.value] == [(3, 3.5)]  # fmt: skip
