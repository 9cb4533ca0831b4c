"""Cached sampler: full-forward and transformers parity, EOS, n, mesh, errors."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from w2s_jax import models, sharding, testing
from w2s_jax.decoding import generation as gen
from w2s_jax.decoding import sampler

PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 7, 31, 8], [60, 6, 12, 19, 4]]


@pytest.fixture(scope="module")
def model():
  # Untied: a tied random model greedily repeats its last prompt token, which
  # would hide cache bugs; this one emits varied tokens.
  cfg = models.get_config(
      "tiny-qwen2", vocab_size=64, max_len=64, tie_embeddings=False
  )
  return models.init_model(cfg, seed=3)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens_BL, segment_ids_BL):
  return nnx.merge(graphdef, state)(tokens_BL, segment_ids_BL=segment_ids_BL)


def _full_forward_greedy(model, prompts, steps, vocab=None):
  """Argmax of an uncached full forward, recomputed every step.

  Sequences are right-padded to one width (causal attention never looks
  right), so one jitted forward serves every step.
  """
  width = max(map(len, prompts)) + steps
  graphdef, state = nnx.split(model)
  forward = lambda t, s: _forward(graphdef, state, t, s)
  seqs = [list(p) for p in prompts]
  toks, logps = [], []
  for _ in range(steps):
    t_BL = np.zeros((len(seqs), width), np.int32)
    s_BL = np.zeros((len(seqs), width), np.int32)
    for i, seq in enumerate(seqs):
      t_BL[i, : len(seq)], s_BL[i, : len(seq)] = seq, 1
    logits = np.asarray(forward(t_BL, s_BL), np.float64)
    last = logits[np.arange(len(seqs)), [len(q) - 1 for q in seqs], :vocab]
    tok = np.argmax(last, axis=-1)
    m = last.max(-1)
    lse = m + np.log(np.exp(last - m[:, None]).sum(-1))
    toks.append(tok)
    logps.append(last[np.arange(len(seqs)), tok] - lse)
    for seq, x in zip(seqs, tok):
      seq.append(int(x))
  return np.stack(toks, 1), np.stack(logps, 1)


@pytest.fixture(scope="module")
def greedy(model):
  return gen.generate(model, PROMPTS, max_new_tokens=10)


def test_greedy_cached_equals_full_forward_argmax(model, greedy):
  assert greedy.tokens.shape == (3, 10)
  toks, logps = _full_forward_greedy(model, PROMPTS, 10)
  np.testing.assert_array_equal(greedy.tokens, toks)
  np.testing.assert_allclose(greedy.logprobs, logps, atol=2e-5)
  np.testing.assert_array_equal(greedy.lengths, 10)
  assert list(greedy.finish_reason) == ["length"] * 3
  np.testing.assert_array_equal(greedy.sampling_logprobs, 0.0)


def test_tied_unembedding_matches_full_forward():
  # The sampler contracts a tied table as stored ([V, D]); check the
  # numerics against the model's own logits (untied models use lm_head).
  cfg = models.get_config("tiny-qwen2", vocab_size=64, max_len=64)
  tied = models.init_model(cfg, seed=8)
  out = gen.generate(tied, PROMPTS, max_new_tokens=10)
  toks, logps = _full_forward_greedy(tied, PROMPTS, 10)
  np.testing.assert_array_equal(out.tokens, toks)
  np.testing.assert_allclose(out.logprobs, logps, atol=2e-5)


def test_greedy_matches_transformers_generate(tmp_path):
  import torch  # noqa: PLC0415

  # Untied, so that greedy decoding does not just repeat the last token.
  hf = testing.make_hf_model("qwen2", seed=9, tie_word_embeddings=False)
  path = testing.save_hf_model(hf, str(tmp_path / "qwen2"))
  ours = models.load_pretrained(path)
  v = hf.config.vocab_size
  prompts = [[7, 3, 90, 41], [12, 5, 5, 60, 2, 33, 8, 71, 19], [1, 80, 27]]
  p = max(map(len, prompts))
  ids = np.zeros((3, p), np.int64)
  mask = np.zeros((3, p), np.int64)
  for i, row in enumerate(prompts):
    ids[i, p - len(row) :], mask[i, p - len(row) :] = row, 1
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  with torch.no_grad():
    ref = hf.generate(
        input_ids=torch.tensor(ids),
        attention_mask=torch.tensor(mask),
        max_new_tokens=32,
        min_new_tokens=32,
        do_sample=False,
    )[:, p:].numpy()
  out = gen.generate(ours, prompts, max_new_tokens=32)
  assert ref.shape == (3, 32) and out.tokens.max() < v
  assert all(len(set(r)) > 3 for r in ref.tolist())  # a non-trivial check
  np.testing.assert_array_equal(out.tokens, ref)


def test_same_key_same_output_and_n_samples(model):
  kw = dict(max_new_tokens=8, temperature=1.0, top_k=20, n=3)
  a = gen.generate(model, PROMPTS, rng=jax.random.key(11), **kw)
  b = gen.generate(model, PROMPTS, rng=jax.random.key(11), **kw)
  c = gen.generate(model, PROMPTS, rng=jax.random.key(12), **kw)
  assert a.tokens.shape == (9, 8)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.sampling_logprobs, b.sampling_logprobs)
  assert np.any(a.tokens != c.tokens)
  # Samples of one prompt differ from each other (64-way vocab, T = 1).
  assert len({tuple(r) for r in a.tokens[:3]}) > 1
  np.testing.assert_array_equal(a.prompt_index, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  # Top-k truncation only removes mass: sampling log-probs >= raw ones.
  assert np.all(a.sampling_logprobs >= a.logprobs - 1e-5)


def test_greedy_n_rows_repeat_the_prompt(model, greedy):
  two = gen.generate(model, PROMPTS, max_new_tokens=10, n=2)
  np.testing.assert_array_equal(two.tokens[0::2], greedy.tokens)
  np.testing.assert_array_equal(two.tokens[1::2], greedy.tokens)


def test_temperature_one_sampling_logprobs_equal_raw(model):
  out = gen.generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, rng=0)
  np.testing.assert_allclose(out.sampling_logprobs, out.logprobs, atol=1e-5)


def test_eos_and_stop_end_rows_others_continue(model, greedy):
  t, free = 10, greedy
  # End on a token that row 1 emits mid-way; a stop id from row 2.
  eos = int(free.tokens[1, 4])
  row2 = free.tokens[2].tolist()
  stop = next(x for j, x in enumerate(row2) if x != eos and eos not in row2[:j])
  out = gen.generate(
      model, PROMPTS, max_new_tokens=t, eos_ids=(eos,), stop_ids=(stop,),
      pad_id=63,
  )  # fmt: skip
  for i in range(3):
    row = free.tokens[i].tolist()
    ends = [j for j, x in enumerate(row) if x in (eos, stop)]
    n = ends[0] + 1 if ends else t
    assert out.lengths[i] == n
    np.testing.assert_array_equal(out.tokens[i, :n], free.tokens[i, :n])
    np.testing.assert_array_equal(out.tokens[i, n:], 63)
    np.testing.assert_array_equal(out.logprobs[i, n:], 0.0)
    np.testing.assert_allclose(out.logprobs[i, :n], free.logprobs[i, :n])
    want = "length" if not ends else ("eos" if row[ends[0]] == eos else "stop")
    assert out.finish_reason[i] == want
  assert out.lengths[1] <= 5 and out.finish_reason[1] == "eos"
  assert out.finish_reason[2] == "stop"


def test_padded_vocab_samples_only_the_tokenizer_ids(model):
  prompts = [[5, 17, 3], [9, 1, 39, 2], [30, 6]]  # ids < 40
  out = gen.generate(model, prompts, max_new_tokens=10, vocab_size=40)
  toks, logps = _full_forward_greedy(model, prompts, 10, vocab=40)
  np.testing.assert_array_equal(out.tokens, toks)
  # Log-probs are normalised over the 40 tokenizer ids only.
  np.testing.assert_allclose(out.logprobs, logps, atol=2e-5)
  hot = gen.generate(model, prompts, 10, 1.0, n=4, rng=1, vocab_size=40)
  assert hot.tokens.max() < 40


def test_make_sampler_uses_the_state_it_is_given(model, greedy):
  graphdef, state = nnx.split(model)
  config = sampler.DecodeConfig(max_new_tokens=10)
  sample = sampler.make_sampler(graphdef, model.cfg, config)
  tokens_BP, seg_BP = gen.prepare_prompts(PROMPTS, width=8)
  out = sample(state, tokens_BP, seg_BP, jax.random.key(0))
  np.testing.assert_array_equal(out.tokens_BT, greedy.tokens)
  # New parameters, same compiled sampler: the output follows the weights.
  other = models.init_model(model.cfg, seed=99)
  out2 = sample(nnx.state(other), tokens_BP, seg_BP, jax.random.key(0))
  toks, _ = _full_forward_greedy(other, PROMPTS, 10)
  np.testing.assert_array_equal(out2.tokens_BT, toks)
  assert np.any(toks != greedy.tokens)


def test_greedy_tokens_are_not_trivial(greedy):
  # Guards the parity tests above against a degenerate model.
  assert all(len(set(r)) > 3 for r in greedy.tokens.tolist())


@pytest.mark.parametrize("mesh_shape", [(2, 1, 4), (8, 1, 1)])
def test_batch_sharded_mesh_gives_single_device_tokens(model, mesh_shape):
  prompts = PROMPTS + [[3, 3, 3, 3], [50]]
  kw = dict(max_new_tokens=6, temperature=1.0, top_k=16, n=2, rng=5)
  ref = gen.generate(model, prompts[:4], **kw)
  mesh = sharding.make_mesh(mesh_shape)
  out = gen.generate(model, prompts[:4], mesh=mesh, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_prepare_prompts_left_pads_arrays_and_lists():
  right = np.array([[4, 5, 6, 0], [7, 0, 0, 0]])
  toks, seg = gen.prepare_prompts(right, [3, 1], padding_side="right")
  np.testing.assert_array_equal(toks, [[4, 5, 6], [0, 0, 7]])
  np.testing.assert_array_equal(seg, [[1, 1, 1], [0, 0, 1]])
  toks2, _ = gen.prepare_prompts([[4, 5, 6], [7]], pad_id=9, width=5)
  np.testing.assert_array_equal(toks2, [[9, 9, 4, 5, 6], [9, 9, 9, 9, 7]])


@pytest.mark.parametrize(
    "prompts, kw, match",
    [
        ([], {}, "prompts is empty"),
        ([[1, 2], []], {}, "prompt 1 is empty"),
        ([[1, 2, 99]], {}, r"prompt 0 has ids outside \[0, 64\)"),
        ([[1] * 60], {}, "exceeds the cache length 64"),
        ([[1, 2]], dict(max_new_tokens=0), "max_new_tokens must be a positive"),
        (
            [[1, 2]],
            dict(max_new_tokens=-3),
            "max_new_tokens must be a positive",
        ),
        ([[1, 2]], dict(temperature=-1.0), "temperature must be >= 0"),
        ([[1, 2]], dict(top_p=0.0, temperature=1.0), r"top_p must be in"),
        ([[1, 2]], dict(top_k=65, temperature=1.0, rng=0), "top_k=65 exceeds"),
        ([[1, 2]], dict(temperature=0.5), "rng is required when sampling"),
        ([[1, 2]], dict(n=0), r"n \(samples per prompt\) must be >= 1"),
        ([[1, 2]], dict(max_len=65), "exceeds the model's max_len 64"),
        ([[1, 2]], dict(vocab_size=65), r"vocab_size=65 must be in \[1, 64\]"),
        ([[1, 2]], dict(eos_ids=(70,)), r"eos_ids \[70\] are outside"),
        ("hello", {}, "tokenize the text first"),
    ],
)
def test_bad_input_raises_clear_errors(model, prompts, kw, match):
  kw = {"max_new_tokens": 8, **kw}
  with pytest.raises(ValueError, match=match):
    gen.generate(model, prompts, **kw)


def test_bad_prompt_arrays_raise():
  with pytest.raises(ValueError, match="prompt_lengths has 1 entries for 2"):
    gen.prepare_prompts(np.ones((2, 3), int), [2])
  with pytest.raises(
      ValueError, match=r"must be in \[0, 3\] \(the array width\)"
  ):
    gen.prepare_prompts(np.ones((1, 3), int), [4])
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    gen.prepare_prompts(np.ones((1, 3), int), [0])
  with pytest.raises(ValueError, match=r"must be \[B, P\]"):
    gen.prepare_prompts(np.ones((3,), int))
  with pytest.raises(ValueError, match="padding_side must be"):
    gen.prepare_prompts([[1]], padding_side="middle")
