"""The decode loop's kept [D, V] copy of a tied table: exact, reused, dropped."""

import gc

import jax
import numpy as np
import pytest
from flax import nnx

from w2s_jax import models
from w2s_jax.decoding import generation as gen
from w2s_jax.decoding import sampler, unembedding

PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 7, 31, 8]]
STEPS = 6


@pytest.fixture(autouse=True)
def _empty():
  unembedding.clear()
  yield
  unembedding.clear()


def _tied(seed):
  cfg = models.get_config("tiny-qwen2", vocab_size=64, max_len=64)
  assert cfg.tie_embeddings
  return models.init_model(cfg, seed=seed)


def _teacher_forced_logprobs(model, prompts, tokens_BT):
  """log p(token) of each emitted token, from one uncached forward."""
  rows = [list(p) + list(t) for p, t in zip(prompts, tokens_BT.tolist())]
  width = max(map(len, rows))
  t_BL = np.zeros((len(rows), width), np.int32)
  s_BL = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    t_BL[i, : len(r)], s_BL[i, : len(r)] = r, 1
  logits = np.asarray(model(t_BL, segment_ids_BL=s_BL), np.float64)
  out = np.zeros(tokens_BT.shape)
  for i, p in enumerate(prompts):
    for j, tok in enumerate(tokens_BT[i]):
      z = logits[i, len(p) - 1 + j]
      m = z.max()
      out[i, j] = z[tok] - m - np.log(np.exp(z - m).sum())
  return out


def test_copy_is_the_table_transposed_and_kept_while_alive():
  model = _tied(0)
  _, state = nnx.split(model)
  w_DV = unembedding.decode_unembedding(model.cfg, state)
  table = np.asarray(state["embed_VD"].get_value())
  np.testing.assert_array_equal(np.asarray(w_DV), table.T)
  assert unembedding.decode_unembedding(model.cfg, state) is w_DV
  assert unembedding.num_kept() == 1


def test_one_compiled_sampler_follows_each_tied_table():
  # A stale copy (another model's table) would give another model's logits:
  # each call's log-probs must be its own model's, in any call order.
  a, b = _tied(1), _tied(2)
  graphdef, state_a = nnx.split(a)
  state_b = nnx.state(b)
  sample = sampler.make_sampler(
      graphdef, a.cfg, sampler.DecodeConfig(max_new_tokens=STEPS)
  )
  tokens_BP, seg_BP = gen.prepare_prompts(PROMPTS)
  key = jax.random.key(0)
  runs = {}
  for name, model, state in [("a", a, state_a), ("b", b, state_b)] * 2:
    out = sample(state, tokens_BP, seg_BP, key)
    ref = _teacher_forced_logprobs(model, PROMPTS, np.asarray(out.tokens_BT))
    np.testing.assert_allclose(out.logprobs_BT, ref, atol=2e-5)
    runs.setdefault(name, np.asarray(out.logprobs_BT))
  assert np.abs(runs["a"] - runs["b"]).max() > 1e-3  # the test can fail
  assert unembedding.num_kept() == 2


def test_rsd_reuses_both_copies_and_matches_a_fresh_run():
  teacher, student = _tied(3), _tied(4)
  kw = dict(max_new_tokens=STEPS, rng=7)
  first = gen.rsd_generate(teacher, student, PROMPTS, **kw)
  kept = [
      unembedding.decode_unembedding(m.cfg, nnx.state(m))
      for m in (teacher, student)
  ]
  again = gen.rsd_generate(teacher, student, PROMPTS, **kw)
  assert unembedding.num_kept() == 2
  for m, w in zip((teacher, student), kept):
    assert unembedding.decode_unembedding(m.cfg, nnx.state(m)) is w
  np.testing.assert_array_equal(again.tokens, first.tokens)
  np.testing.assert_array_equal(again.logprobs, first.logprobs)


def test_copies_are_dropped_with_their_tables():
  models_ = [_tied(s) for s in (5, 6, 7)]
  for m in models_:
    unembedding.decode_unembedding(m.cfg, nnx.state(m))
  assert unembedding.num_kept() == unembedding.MAX_TABLES  # oldest evicted
  models_[2].embed_VD.get_value().delete()  # as a donating train step does
  assert unembedding.num_kept() == unembedding.MAX_TABLES - 1
  del models_
  gc.collect()
  assert unembedding.num_kept() == 0


def test_untied_models_and_traced_tables_keep_nothing():
  cfg = models.get_config(
      "tiny-qwen2", vocab_size=64, max_len=64, tie_embeddings=False
  )
  untied = models.init_model(cfg, seed=0)
  assert unembedding.decode_unembedding(cfg, nnx.state(untied)) is None
  tied = _tied(8)
  state = nnx.state(tied)
  traced = jax.jit(lambda s: unembedding.decode_unembedding(tied.cfg, s))
  np.testing.assert_array_equal(
      np.asarray(traced(state)),
      np.asarray(state["embed_VD"].get_value()).T,
  )
  assert unembedding.num_kept() == 0
