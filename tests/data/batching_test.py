"""Tests for w2s_jax.data.batching: length buckets and packing.

The module is internal; it is exercised through pipeline.make_dataset on tiny
examples and checked against independent references (brute-force first-fit,
per-example attention).
"""

import itertools

import grain
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
