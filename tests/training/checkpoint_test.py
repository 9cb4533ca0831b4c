"""Orbax wrapper: round trip, keep-K, interrupted writes, errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax import sharding
from w2s_jax.training import checkpoint


def _state(v):
  return {
      "params": {"w": jnp.full((4, 2), v, jnp.float32)},
      "step": jnp.asarray(v, jnp.int32),
      "rng": jax.random.key_data(jax.random.key(int(v))),
  }


def test_round_trip_and_keep(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "c"), save_every=1, keep=2)
  for step in (1, 2, 3):
    assert ckpt.save(step, _state(step), {"data": {"pos": step}})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  state, meta, step = ckpt.restore(_state(0))
  assert step == 3 and meta == {"data": {"pos": 3}}
  np.testing.assert_array_equal(state["params"]["w"], np.full((4, 2), 3.0))
  np.testing.assert_array_equal(
      state["rng"], jax.random.key_data(jax.random.key(3))
  )
  ckpt.close()


def test_save_interval(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "c"), save_every=5, keep=3)
  saved = [s for s in range(1, 12) if ckpt.save(s, _state(s))]
  assert saved == [5, 10]
  assert ckpt.save(11, _state(11), force=True)
  ckpt.close()


def test_restore_into_sharded_target(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "c"))
  ckpt.save(1, _state(1.0), force=True)
  ckpt.wait()
  target = _state(0.0)
  # 4 rows over 8 devices cannot split evenly: use 4 devices.
  mesh4 = sharding.make_mesh((4, 1, 1), devices=jax.devices()[:4])
  sh4 = jax.sharding.NamedSharding(mesh4, jax.sharding.PartitionSpec("data"))
  target["params"]["w"] = jax.ShapeDtypeStruct(
      (4, 2), jnp.float32, sharding=sh4
  )
  state, _, _ = ckpt.restore(target)
  assert state["params"]["w"].sharding == sh4
  np.testing.assert_array_equal(state["params"]["w"], np.ones((4, 2)))
  ckpt.close()


def test_unfinished_write_is_ignored(tmp_path):
  d = tmp_path / "c"
  ckpt = checkpoint.Checkpointer(str(d), save_every=1)
  ckpt.save(1, _state(1.0))
  ckpt.close()
  # What a process killed mid-write leaves: an orbax temporary step folder.
  os.makedirs(d / "2.orbax-checkpoint-tmp-123" / "state")
  ckpt = checkpoint.Checkpointer(str(d), save_every=1)
  assert ckpt.latest_step() == 1
  state, _, _ = ckpt.restore(_state(0.0))
  np.testing.assert_array_equal(state["params"]["w"], np.ones((4, 2)))
  ckpt.close()


def test_no_checkpoint(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*empty"):
    ckpt.restore(_state(0.0))


def test_workdir_under_a_file(tmp_path):
  (tmp_path / "afile").write_text("x")
  with pytest.raises(NotADirectoryError, match=r"afile.*is\s+a file"):
    checkpoint.Checkpointer(str(tmp_path / "afile" / "ckpt"))
