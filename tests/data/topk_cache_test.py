"""Tests for w2s_jax.data.topk_cache: round trip, validation, atomicity."""

import os
import pickle

import grain
import msgpack
import numpy as np
import pytest
from array_record.python import array_record_module

from w2s_jax.data import topk_cache

V, K, TEMP = 50, 4, 0.7


def _header(**kw):
  args = dict(k=K, temperature=TEMP, vocab_size=V, tokenizer_fingerprint="fp")
  args.update(kw)
  return topk_cache.TopKHeader(**args)


def _example(rng, length, temperature=TEMP, prompt_length=1):
  """A teacher top-k computed independently in float64 from random logits."""
  ids = rng.integers(0, V, size=length)
  logits = rng.normal(size=(length, V)) * 3
  z = logits / temperature
  lp_full = z - z.max(-1, keepdims=True)
  lp_full -= np.log(np.exp(lp_full).sum(-1, keepdims=True))
  top = np.argsort(-lp_full, axis=-1)[:, :K]
  lp = np.take_along_axis(lp_full, top, -1)
  return topk_cache.TopKExample(ids, top, lp, temperature, prompt_length)


def _write(path, examples, header=None):
  return topk_cache.write_topk_cache(path, header or _header(), examples)


def test_round_trip_random_access(tmp_path):
  rng = np.random.default_rng(0)
  examples = [_example(rng, n, prompt_length=n // 2) for n in (1, 5, 9, 3)]
  path = tmp_path / "c.array_record"
  assert _write(path, examples) == 4
  reader = topk_cache.TopKCacheReader(
      path,
      expected_k=K,
      expected_temperature=TEMP,
      expected_vocab_size=V,
      expected_tokenizer_fingerprint="fp",
  )
  assert len(reader) == 4
  assert reader.header == _header()
  for i in (2, 0, 3, 1, -1):  # out of order on purpose
    got, want = reader[i], examples[i]
    assert got.token_ids.dtype == np.int32 and got.topk_ids.dtype == np.int32
    assert got.topk_logprobs.dtype == np.float32
    np.testing.assert_array_equal(got.token_ids, want.token_ids)
    np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
    np.testing.assert_allclose(got.topk_logprobs, want.topk_logprobs, rtol=1e-6)
    assert got.topk_ids.shape == (len(want.token_ids), K)
    assert got.prompt_length == want.prompt_length
    assert got.temperature == TEMP
  many = reader.read_many([3, 3, 0])
  np.testing.assert_array_equal(many[1].token_ids, examples[3].token_ids)
  with pytest.raises(IndexError, match="index 4 out of range .* 4 examples"):
    reader[4]


def test_float16_storage_is_lossy_but_close(tmp_path):
  rng = np.random.default_rng(1)
  examples = [_example(rng, 6)]
  path = tmp_path / "h.array_record"
  _write(path, examples, _header(logprob_dtype="float16"))
  got = topk_cache.TopKCacheReader(path)[0]
  want = examples[0].topk_logprobs
  np.testing.assert_allclose(got.topk_logprobs, want, rtol=1e-3, atol=1e-3)
  assert got.topk_logprobs.dtype == np.float32
  # Stored as 2 bytes per log-prob: the flag really changes the storage.
  raw = array_record_module.ArrayRecordReader(str(path)).read([1])[0]
  assert len(msgpack.unpackb(raw)["topk_logprobs"]) == 6 * K * 2
  assert not np.array_equal(got.topk_logprobs, want.astype(np.float32))


def test_reader_is_a_picklable_grain_source(tmp_path):
  rng = np.random.default_rng(2)
  examples = [_example(rng, n) for n in (2, 3, 4)]
  path = tmp_path / "g.array_record"
  _write(path, examples)
  reader = pickle.loads(pickle.dumps(topk_cache.TopKCacheReader(path)))
  ds = grain.MapDataset.source(reader).map(lambda ex: len(ex.token_ids))
  assert list(ds) == [2, 3, 4]


@pytest.mark.parametrize(
    "expect, match",
    [
        (dict(expected_k=8), "cache has k=4 but 8 was expected"),
        (dict(expected_temperature=1.0), "temperature=0.7 but 1.0"),
        (dict(expected_vocab_size=51), "vocab_size=50 but 51"),
        (dict(expected_tokenizer_fingerprint="x"), "fingerprint='fp' but 'x'"),
    ],
)
def test_reader_checks_expectations(tmp_path, expect, match):
  path = tmp_path / "e.array_record"
  _write(path, [_example(np.random.default_rng(3), 2)])
  with pytest.raises(ValueError, match=match):
    topk_cache.TopKCacheReader(path, **expect)


def test_writer_validation_messages(tmp_path):
  rng = np.random.default_rng(4)
  ex = _example(rng, 3)
  path = tmp_path / "w.array_record"
  with topk_cache.TopKCacheWriter(path, _header()) as w:
    with pytest.raises(ValueError, match=r"example 0: topk_ids \(3, 3\)"):
      w.write(ex.token_ids, ex.topk_ids[:, :3], ex.topk_logprobs[:, :3])
    with pytest.raises(ValueError, match="token_ids has values outside"):
      w.write(ex.token_ids + V, ex.topk_ids, ex.topk_logprobs)
    with pytest.raises(ValueError, match="repeats an id within a row"):
      w.write(ex.token_ids, np.zeros((3, K), int), ex.topk_logprobs)
    with pytest.raises(ValueError, match="not logits"):
      w.write(ex.token_ids, ex.topk_ids, ex.topk_logprobs + 5.0)
    with pytest.raises(ValueError, match="probability mass .* exceeds 1"):
      w.write(ex.token_ids, ex.topk_ids, np.full((3, K), np.log(0.3)))
    with pytest.raises(ValueError, match="prompt_length must be an int in"):
      w.write(ex.token_ids, ex.topk_ids, ex.topk_logprobs, prompt_length=4)
    with pytest.raises(ValueError, match="differs from the header's 0.7"):
      w.write(ex.token_ids, ex.topk_ids, ex.topk_logprobs, temperature=1.0)
    with pytest.raises(ValueError, match="1-D integer array"):
      w.write(ex.token_ids.astype(float), ex.topk_ids, ex.topk_logprobs)
    w.write(ex.token_ids, ex.topk_ids, ex.topk_logprobs)
  # Rejected writes left nothing behind: exactly one example was stored.
  assert len(topk_cache.TopKCacheReader(path)) == 1
  with pytest.raises(ValueError, match="k=60 exceeds vocab_size=50"):
    _header(k=60)
  with pytest.raises(ValueError, match="temperature must be a finite number"):
    _header(temperature=0.0)
  with pytest.raises(ValueError, match="logprob_dtype must be"):
    _header(logprob_dtype="bfloat16")


def test_writer_is_atomic(tmp_path):
  rng = np.random.default_rng(5)
  path = tmp_path / "a.array_record"
  old = [_example(rng, 2)]
  _write(path, old)
  before = path.read_bytes()
  with pytest.raises(RuntimeError, match="crash"):
    with topk_cache.TopKCacheWriter(path, _header(k=2)) as w:
      w.write(np.arange(3), np.tile([0, 1], (3, 1)), np.full((3, 2), -1.0))
      raise RuntimeError("crash mid-scoring")
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["a.array_record"]
  with pytest.raises(FileNotFoundError, match="does not exist; create it"):
    topk_cache.TopKCacheWriter(tmp_path / "no" / "a.array_record", _header())
  np.testing.assert_array_equal(
      topk_cache.TopKCacheReader(path)[0].token_ids, old[0].token_ids
  )


def test_reader_rejects_foreign_and_inconsistent_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    topk_cache.TopKCacheReader(tmp_path / "none.array_record")
  junk = tmp_path / "junk.array_record"
  junk.write_bytes(b"not an array record" * 10)
  with pytest.raises(ValueError, match="is not a top-k cache"):
    topk_cache.TopKCacheReader(junk)

  def raw_file(name, records):
    p = str(tmp_path / name)
    w = array_record_module.ArrayRecordWriter(p, "group_size:1")
    for r in records:
      w.write(msgpack.packb(r))
    w.close()
    return p

  header = dict(
      format="w2s_jax.topk_cache",
      version=1,
      k=2,
      temperature=1.0,
      vocab_size=10,
      tokenizer_fingerprint="fp",
      logprob_dtype="float32",
  )
  other = raw_file("other.array_record", [{"format": "something"}])
  with pytest.raises(ValueError, match="holds something else"):
    topk_cache.TopKCacheReader(other)
  future = raw_file("v2.array_record", [{**header, "version": 2}])
  with pytest.raises(ValueError, match="version 2 is not supported"):
    topk_cache.TopKCacheReader(future)

  def record(length, k, temperature=1.0):
    return dict(
        length=length,
        prompt_length=0,
        temperature=temperature,
        token_ids=np.zeros(length, "<i4").tobytes(),
        topk_ids=np.zeros(length * k, "<i4").tobytes(),
        topk_logprobs=np.zeros(length * k, "<f4").tobytes(),
    )

  bad = raw_file(
      "bad.array_record",
      [header, record(3, 2), record(3, 3), record(2, 2, temperature=0.5)],
  )
  reader = topk_cache.TopKCacheReader(bad)
  assert reader[0].topk_ids.shape == (3, 2)
  with pytest.raises(ValueError, match="example 1: sizes .* header k = 2"):
    reader[1]
  with pytest.raises(ValueError, match="example 2: temperature 0.5 differs"):
    reader[2]
