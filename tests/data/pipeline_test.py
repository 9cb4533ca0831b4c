"""Tests for w2s_jax.data.pipeline on tiny examples and 8 fake CPU devices."""

import itertools
import json

import grain
import jax
import numpy as np
import pytest

from w2s_jax.data import pipeline as pl

PAD = 99
ONE = grain.sharding.NoSharding()


def _examples(n=23, seed=0, max_prompt=6, max_completion=6):
  rng = np.random.default_rng(seed)
  return [
      {
          "prompt_ids": rng.integers(1, 50, rng.integers(1, max_prompt + 1)),
          "completion_ids": list(
              rng.integers(1, 50, rng.integers(1, max_completion + 1))
          ),
      }
      for _ in range(n)
  ]


def _config(**kw):
  args = dict(batch_size=4, max_length=12, pad_id=PAD, shuffle=True, seed=3)
  args.update(kw)
  return pl.PipelineConfig(**args)


def _batches(examples, config, shard=ONE, limit=None):
  ds, stats = pl.make_dataset(examples, config, shard=shard)
  it = iter(ds)
  return list(itertools.islice(it, limit)), stats


def _expected_row(example, length, mode, prompt_only=False):
  """Independent reference for one unpacked row."""
  p = [int(x) for x in example["prompt_ids"]]
  c = [] if prompt_only else [int(x) for x in example["completion_ids"]]
  ids = p + c
  target = [0] * len(p) + [1] * len(c)
  target[0] = 0
  pad = length - len(ids)
  if mode == "left":
    return dict(
        tokens=[PAD] * pad + ids,
        positions=[0] * pad + list(range(len(ids))),
        segment_ids=[0] * pad + [1] * len(ids),
        completion_mask=[0] * pad + target,
    )
  return dict(
      tokens=ids + [PAD] * pad,
      positions=list(range(len(ids))) + [0] * pad,
      segment_ids=[1] * len(ids) + [0] * pad,
      completion_mask=target + [0] * pad,
  )


@pytest.mark.parametrize("mode", ["right", "left"])
def test_unpacked_rows_match_reference(mode):
  examples = _examples()
  batches, stats = _batches(examples, _config(mode=mode, drop_remainder=False))
  assert stats.num_batches == len(batches) == 6  # ceil(23 / 4)
  seen = []
  for batch in batches:
    assert set(batch) == {
        "tokens",
        "positions",
        "segment_ids",
        "completion_mask",
        "index",
    }
    for key, value in batch.items():
      assert value.dtype == np.int32, key
      assert value.shape == ((4,) if key == "index" else (4, 12))
    for r, i in enumerate(batch["index"]):
      if i < 0:  # padding row of the last batch
        assert (batch["segment_ids"][r] == 0).all()
        assert (batch["tokens"][r] == PAD).all()
        continue
      seen.append(int(i))
      want = _expected_row(examples[i], 12, mode)
      for key, value in want.items():
        np.testing.assert_array_equal(batch[key][r], value, err_msg=key)
  assert sorted(seen) == list(range(23))


def test_left_prompt_only_for_generation():
  examples = [{"prompt_ids": [5, 6, 7]}, {"prompt_ids": [8]}]
  cfg = _config(mode="left", prompt_only=True, batch_size=2, shuffle=False)
  (batch,), _ = _batches(examples, cfg)
  np.testing.assert_array_equal(batch["tokens"][0, -4:], [PAD, 5, 6, 7])
  np.testing.assert_array_equal(batch["tokens"][1, -2:], [PAD, 8])
  np.testing.assert_array_equal(batch["positions"][0, -3:], [0, 1, 2])
  assert batch["completion_mask"].sum() == 0
  assert batch["segment_ids"].sum() == 4


def test_truncation_policies_are_counted():
  examples = [
      {"prompt_ids": [1, 2], "completion_ids": [3, 4]},  # fits (4)
      {"prompt_ids": [1, 2, 3], "completion_ids": [4, 5, 6]},  # 6 > 5
      {"prompt_ids": [1] * 5, "completion_ids": [2]},  # prompt fills row
      {"prompt_ids": [1], "completion_ids": [2, 3, 4, 5]},  # fits (5)
  ]
  cfg = _config(batch_size=1, max_length=5, shuffle=False, truncation="drop")
  batches, stats = _batches(examples, cfg)
  assert (stats.num_kept, stats.num_truncated, stats.num_dropped) == (2, 0, 2)
  assert [int(b["index"][0]) for b in batches] == [0, 3]

  cfg = _config(batch_size=1, max_length=5, shuffle=False)  # truncate
  batches, stats = _batches(examples, cfg)
  assert (stats.num_kept, stats.num_truncated, stats.num_dropped) == (3, 1, 1)
  assert [int(b["index"][0]) for b in batches] == [0, 1, 3]
  # The completion is cut, the prompt kept whole.
  np.testing.assert_array_equal(batches[1]["tokens"][0], [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(
      batches[1]["completion_mask"][0], [0, 0, 0, 1, 1]
  )

  cfg = _config(batch_size=1, max_length=5, truncation="raise")
  with pytest.raises(ValueError, match="example 1: 3 prompt \\+ 3 completion"):
    pl.make_dataset(examples, cfg, shard=ONE)
  cfg = _config(max_length=1, truncation="drop")
  with pytest.raises(ValueError, match="no example fits max_length=1"):
    pl.make_dataset(examples, cfg, shard=ONE)


@pytest.mark.parametrize(
    "example, match",
    [
        ({"prompt_ids": [1]}, "example 0 has no 'completion_ids'"),
        (
            {"prompt_ids": [1], "completion_ids": []},
            "'completion_ids' is empty",
        ),
        ({"prompt_ids": [1.5], "completion_ids": [2]}, "1-D sequence of int"),
        ({"prompt_ids": [[1]], "completion_ids": [2]}, "shape \\(1, 1\\)"),
        ({"prompt_ids": [1], "completion_ids": [64]}, "outside \\[0, 64\\)"),
        ({"prompt_ids": [-1], "completion_ids": [2]}, "min -1"),
        ([1, 2], "example 0 has no 'prompt_ids'"),
    ],
)
def test_bad_examples_name_the_example(example, match):
  with pytest.raises(ValueError, match=match):
    pl.make_dataset([example], _config(vocab_size=64), shard=ONE)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(mode="padded"), "mode must be one of"),
        (dict(truncation="cut"), "truncation must be one of"),
        (dict(length_buckets=(4, 8)), "ending at max_length=12"),
        (dict(length_buckets=(8, 4, 12)), "strictly increasing positive"),
        (dict(mode="packed", length_buckets=(12,)), "packed rows are always"),
        (dict(mode="packed", prompt_only=True), "use mode='left'"),
    ],
)
def test_bad_config(kw, match):
  with pytest.raises(ValueError, match=match):
    _config(**kw)


def _indices(batches):
  return [int(i) for b in batches for i in b["index"]]


def test_order_is_a_pure_function_of_the_seed_and_epochs_reshuffle():
  examples = _examples(n=20)
  cfg = _config(num_epochs=3, batch_size=5)
  first, stats = _batches(examples, cfg)
  again, _ = _batches(examples, cfg)
  assert stats.num_batches == len(first) == 12
  for a, b in zip(first, again, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  order = _indices(first)
  epochs = [order[i * 20 : (i + 1) * 20] for i in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(20))  # each epoch is a permutation
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
  assert epochs[0] != list(range(20))
  other, _ = _batches(examples, _config(num_epochs=3, batch_size=5, seed=4))
  assert _indices(other) != order
  plain, _ = _batches(examples, _config(batch_size=5, shuffle=False))
  assert _indices(plain) == list(range(20))
  # Read threads, a grain source as input and the default jax-process shard
  # (process 0 of 1 here) change nothing.
  ds, _ = pl.make_dataset(
      grain.MapDataset.source(examples),
      _config(num_epochs=3, batch_size=5, num_threads=2),
  )
  _assert_same(list(ds), first)


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="right", num_epochs=None),
        dict(
            mode="left",
            num_epochs=4,
            length_buckets=(4, 8, 12),
            drop_remainder=False,
        ),
        dict(mode="packed", num_epochs=None),
        dict(mode="packed", num_epochs=4, packing_bins=3, batch_size=2),
    ],
    ids=["right", "left-buckets", "packed", "packed-bins"],
)
def test_restore_from_state_continues_exactly(kw):
  examples = _examples(n=13)
  ds, _ = pl.make_dataset(examples, _config(**kw), shard=ONE)
  k, m = 5, 7  # crosses epoch boundaries (13 examples, 4 rows per batch)
  it = iter(ds)
  for _ in range(k):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  expected = [next(it) for _ in range(m)]
  fresh_ds, _ = pl.make_dataset(examples, _config(**kw), shard=ONE)
  fresh = iter(fresh_ds)
  fresh.set_state(state)
  _assert_same([next(fresh) for _ in range(m)], expected)


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="right", num_epochs=2, drop_remainder=False),
        dict(mode="right", num_epochs=None),
        dict(mode="left", length_buckets=(4, 8, 12), drop_remainder=False),
    ],
)
def test_process_shards_tile_the_single_process_batch(kw):
  """Two processes' batches, concatenated, are the one-process batch."""
  examples = _examples(n=21)
  cfg_global = _config(batch_size=6, **kw)
  cfg_local = _config(batch_size=3, **kw)
  limit = None if kw.get("num_epochs", 1) else 9
  whole, stats = _batches(examples, cfg_global, limit=limit)
  parts = [
      _batches(
          examples, cfg_local, grain.sharding.ShardOptions(i, 2), limit=limit
      )
      for i in range(2)
  ]
  assert len(parts[0][0]) == len(parts[1][0]) == len(whole)
  assert parts[0][1].num_batches == stats.num_batches
  for step, batch in enumerate(whole):
    for k in batch:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][0][step][k], parts[1][0][step][k]]),
          batch[k],
          err_msg=k,
      )
  if kw.get("num_epochs") == 2:
    got = [i for i in _indices(whole) if i >= 0]
    assert sorted(got) == sorted(list(range(21)) * 2)


def test_drop_remainder_counts_full_global_batches():
  examples = _examples(n=21)
  batches, stats = _batches(examples, _config(batch_size=4))
  assert stats.num_batches == len(batches) == 5
  assert min(_indices(batches)) >= 0
  with pytest.raises(ValueError, match="no full global batch of 32 rows"):
    pl.make_dataset(
        examples,
        _config(batch_size=16),
        shard=grain.sharding.ShardOptions(0, 2),
    )


def _mesh(shape, names):
  types = (jax.sharding.AxisType.Explicit,) * len(names)
  return jax.make_mesh(shape, names, axis_types=types)


@pytest.mark.parametrize(
    "shape, names, spec",
    [
        ((4, 2), ("data", "model"), jax.P("data")),
        ((2, 2, 2), ("data", "fsdp", "tensor"), jax.P(("data", "fsdp"))),
        ((8,), ("data",), jax.P("data", None)),
    ],
)
def test_to_global_array_shards_the_batch(shape, names, spec):
  assert jax.device_count() == 8
  mesh = _mesh(shape, names)
  batch, _ = _batches(_examples(n=8), _config(batch_size=8), limit=1)
  out = pl.to_global_array(batch[0], mesh, spec)
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  shards = int(np.prod([mesh.shape[a] for a in axes]))
  for key, arr in out.items():
    assert isinstance(arr, jax.Array)
    np.testing.assert_array_equal(np.asarray(arr), batch[0][key])
    assert arr.sharding.spec[0] == spec[0]
    rows = {
        (s.index[0].start or 0, s.data.shape[0]) for s in arr.addressable_shards
    }
    assert rows == {(i * 8 // shards, 8 // shards) for i in range(shards)}
    for s in arr.addressable_shards:
      np.testing.assert_array_equal(np.asarray(s.data), batch[0][key][s.index])


def test_to_global_array_errors():
  mesh = _mesh((4, 2), ("data", "model"))
  batch = {"tokens": np.zeros((6, 3), np.int32)}
  with pytest.raises(ValueError, match="6 rows .* not divisible by its 4"):
    pl.to_global_array(batch, mesh, jax.P("data"))
  with pytest.raises(ValueError, match=r"names axes \['batch'\]"):
    pl.to_global_array(batch, mesh, jax.P("batch"))
  with pytest.raises(ValueError, match="is a scalar"):
    pl.to_global_array({"n": np.int32(3)}, mesh, jax.P("data"))
