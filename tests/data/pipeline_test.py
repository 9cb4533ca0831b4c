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


def test_length_buckets_pick_the_smallest_fitting_bucket():
  rng = np.random.default_rng(7)
  examples = [
      {"prompt_ids": rng.integers(1, 9, n)} for n in rng.integers(1, 13, 40)
  ]
  lengths = [len(e["prompt_ids"]) for e in examples]
  buckets = (2, 4, 8, 12)
  cfg = _config(
      mode="left",
      prompt_only=True,
      length_buckets=buckets,
      bucket_window=2,
      drop_remainder=False,
  )
  batches, _ = _batches(examples, cfg)
  seen = []
  for b in batches:
    rows = [lengths[i] for i in b["index"] if i >= 0]
    width = b["tokens"].shape[1]
    assert width == min(x for x in buckets if x >= max(rows))
    seen += [int(i) for i in b["index"] if i >= 0]
  assert sorted(seen) == list(range(40))
  # Rows are sorted by length within each window of 2 batches x 4 rows, and
  # the windows are a shuffled order, not the input order.
  for w in range(0, len(seen), 8):
    window = [lengths[i] for i in seen[w : w + 8]]
    assert window == sorted(window)
  assert seen != sorted(seen, key=lambda i: lengths[i])
  widths = [b["tokens"].shape[1] for b in batches]
  assert sum(widths) < len(batches) * 12 and len(set(widths)) > 1


def _first_fit_reference(lengths, bins, capacity, max_segments=None):
  """Greedy first-fit over bins; all bins are emitted when one item misses."""
  rows, current = [], [[] for _ in range(bins)]
  for item, n in enumerate(lengths):
    for _ in range(2):
      free = [
          b
          for b in range(bins)
          if sum(lengths[i] for i in current[b]) + n <= capacity
          and (max_segments is None or len(current[b]) < max_segments)
      ]
      if free:
        current[free[0]].append(item)
        break
      rows += [c for c in current if c]
      current = [[] for _ in range(bins)]
  return rows + [c for c in current if c]


@pytest.mark.parametrize("bins, max_segments", [(4, None), (7, 2)])
def test_packing_is_greedy_first_fit(bins, max_segments):
  examples = _examples(n=30, seed=1)
  cfg = _config(
      mode="packed",
      shuffle=False,
      drop_remainder=False,
      packing_bins=bins,
      max_segments_per_row=max_segments,
  )
  batches, _ = _batches(examples, cfg)
  tokens = [
      np.concatenate([e["prompt_ids"], e["completion_ids"]]) for e in examples
  ]
  rows = _first_fit_reference([len(t) for t in tokens], bins, 12, max_segments)
  got = np.concatenate([b["tokens"] for b in batches])
  assert len(got) == -(-len(rows) // 4) * 4
  for r, members in enumerate(rows):
    want = np.concatenate([tokens[i] for i in members])
    np.testing.assert_array_equal(got[r, : len(want)], want)
    assert (got[r, len(want) :] == PAD).all()
  assert (got[len(rows) :] == PAD).all()  # padding rows of the last batch


def _attention_mask(segment_ids_BL):
  """[B, L, L]: same non-padding segment and causal."""
  seg = segment_ids_BL
  same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
  causal = np.tril(np.ones(seg.shape[1:] * 2, bool))
  return same & causal


def test_packing_never_crosses_a_segment_boundary():
  examples = _examples(n=40, seed=2, max_prompt=4, max_completion=4)
  cfg = _config(mode="packed", num_epochs=2, drop_remainder=False)
  batches, _ = _batches(examples, cfg)
  rng = np.random.default_rng(0)
  weight = rng.normal(size=(100, 12))  # a stand-in for one attention head
  by_tokens = {}
  for e in examples:
    ids = np.concatenate([e["prompt_ids"], e["completion_ids"]])
    by_tokens.setdefault(tuple(ids.tolist()), 0)
    by_tokens[tuple(ids.tolist())] += 2  # two epochs
  found = {}
  for b in batches:
    seg, pos, tok, cm = (
        b["segment_ids"],
        b["positions"],
        b["tokens"],
        b["completion_mask"],
    )
    # Loss: the target at t+1 is always in the same (real) segment as t.
    boundary = seg[:, 1:] != seg[:, :-1]
    assert not (cm[:, 1:].astype(bool) & boundary).any()
    assert not (cm.astype(bool) & (seg == 0)).any()
    # Attention: masked aggregation over the packed row equals the same
    # aggregation over each example alone.
    mask = _attention_mask(seg)
    packed_out = np.einsum("bqk,bk->bq", mask, weight[tok, pos])
    for r in range(seg.shape[0]):
      for s in range(1, seg[r].max() + 1):
        where = np.flatnonzero(seg[r] == s)
        assert (np.diff(where) == 1).all()  # contiguous
        np.testing.assert_array_equal(pos[r, where], np.arange(len(where)))
        ids = tok[r, where]
        alone = np.cumsum(weight[ids, np.arange(len(ids))])
        np.testing.assert_allclose(packed_out[r, where], alone, rtol=1e-12)
        key = tuple(ids.tolist())
        found[key] = found.get(key, 0) + 1
        p = None
        for e in examples:
          full = np.concatenate([e["prompt_ids"], e["completion_ids"]])
          if tuple(full.tolist()) == key:
            p = len(e["prompt_ids"])
        want = np.r_[np.zeros(p), np.ones(len(ids) - p)]
        want[0] = 0
        np.testing.assert_array_equal(cm[r, where], want)
  assert found == by_tokens  # every example packed exactly once per epoch


def test_empty_prompt_first_token_is_not_a_target():
  examples = [{"prompt_ids": [], "completion_ids": [4, 5, 6]}] * 3
  (batch,), _ = _batches(examples, _config(mode="packed", batch_size=1))
  np.testing.assert_array_equal(
      batch["segment_ids"][0, :9], [1] * 3 + [2] * 3 + [3] * 3
  )
  np.testing.assert_array_equal(batch["completion_mask"][0, :9], [0, 1, 1] * 3)


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
