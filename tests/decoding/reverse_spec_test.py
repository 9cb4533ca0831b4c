"""RSD: the acceptance rule on hand-built logits, the jitted loop on models."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers as hf_tokenizers
from flax import nnx

from w2s_jax import models, sharding
from w2s_jax.data import tokenizers
from w2s_jax.decoding import generation as gen
from w2s_jax.decoding import reverse_spec, rsd_rule

NUM_SAMPLES = 20_000
NEG = -1e9  # a logit whose probability is exactly 0 in fp32 and fp64


# ----------------------------------------------------------------------------
# A float64 reference of the rule, written from docs/methods.md, "RSD"
# ----------------------------------------------------------------------------


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def _nucleus(p, order, top_p):
  keep, before = np.zeros(p.size, bool), 0.0
  for i in order:
    if before >= top_p:
      break
    keep[i] = True
    before += p[i]
  return keep


def reference_rule(zt, zs, p: rsd_rule.RSDParams, enumerate_proposals=True):
  """Exact output distribution of the rule.

  Returns:
    (emit[V], emit_from_teacher[V], proposal[J+1] (last = fallback), accept)
  """
  zt, zs = np.asarray(zt, np.float64), np.asarray(zs, np.float64)
  v, j = zt.size, p.num_proposals
  pt = _softmax(zt / p.teacher_temperature)
  order_t = np.argsort(-zt, kind="stable")
  keep = _nucleus(pt, order_t, p.teacher_top_p)
  keep[order_t[p.teacher_top_k :]] = False
  cat = np.where(keep, pt, 0.0)
  cat /= cat.sum()
  order_s = np.argsort(-zs, kind="stable")
  in_s = np.zeros(v, bool)
  in_s[order_s[: p.top_k]] = True
  if p.student_prob == "after":
    q = _softmax(zs / p.student_temperature)
    q = np.where(_nucleus(q, order_s, p.student_top_p), q, 0.0)
    ps = q / q.sum()
  else:
    ps = _softmax(zs)
  accept = in_s & (ps >= p.threshold) & (cat > 0)
  fb = np.where(in_s, ps, 0.0)
  fb /= fb.sum()
  emit, emit_t, prop = np.zeros(v), np.zeros(v), np.zeros(j + 1)
  if enumerate_proposals:  # every sequence of J proposals
    for seq in itertools.product(np.flatnonzero(cat), repeat=j):
      w = np.prod(cat[list(seq)])
      for i, c in enumerate(seq):
        if accept[c]:
          emit[c] += w
          emit_t[c] += w
          prop[i] += w
          break
      else:
        emit += w * fb
        prop[j] += w
  else:  # closed form
    r = cat[accept].sum()
    miss = (1 - r) ** j
    emit_t = np.where(accept, cat, 0.0) * ((1 - miss) / r if r > 0 else 0.0)
    emit = emit_t + miss * fb
    prop[:j] = r * (1 - r) ** np.arange(j)
    prop[j] = miss
  return emit, emit_t, prop, accept


def chi2_pvalue(counts, probs):
  counts, probs = np.asarray(counts, float), np.asarray(probs, float)
  assert counts[probs <= 1e-12].sum() == 0, "outcome outside the support"
  support = probs > 1e-12
  expected = probs[support] * counts.sum()
  stat = float(((counts[support] - expected) ** 2 / expected).sum())
  dof = int(support.sum()) - 1
  if dof == 0:
    return 1.0
  try:
    from scipy import stats  # noqa: PLC0415

    return float(stats.chi2.sf(stat, dof))
  except ImportError:  # Wilson-Hilferty chi2 quantile at p = 1e-3
    z = 3.090232306167813
    q = dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3
    return 1.0 if stat < q else 0.0


@functools.partial(jax.jit, static_argnames="params")
def _choose(key, zt_BV, zs_BV, params):
  return rsd_rule.rsd_choose(key, zt_BV, zs_BV, params)


def _run_rule(zt, zs, params, seed=0):
  b = (NUM_SAMPLES, len(zt))
  c = _choose(
      jax.random.key(seed),
      jnp.broadcast_to(jnp.asarray(zt, jnp.float32), b),
      jnp.broadcast_to(jnp.asarray(zs, jnp.float32), b),
      params,
  )
  return jax.tree.map(np.asarray, c)


def _check_against_reference(c, zt, zs, params):
  v = len(zt)
  emit, emit_t, prop, accept = reference_rule(zt, zs, params)
  assert chi2_pvalue(np.bincount(c.token_B, minlength=v), emit) > 1e-3
  # Joint (token, provenance): teacher part and student part separately.
  joint = np.concatenate([emit_t, emit - emit_t])
  idx = c.token_B + v * (~c.from_teacher_B)
  assert chi2_pvalue(np.bincount(idx, minlength=2 * v), joint) > 1e-3
  prop_idx = np.where(c.proposal_B < 0, params.num_proposals, c.proposal_B)
  counts = np.bincount(prop_idx, minlength=params.num_proposals + 1)
  assert chi2_pvalue(counts, prop) > 1e-3
  # Every teacher token satisfies the predicate; provenance <-> proposal.
  assert np.all(accept[c.token_B[c.from_teacher_B]])
  np.testing.assert_array_equal(c.from_teacher_B, c.proposal_B >= 0)
  # The reported log-prob is the exact probability of the emitted token.
  np.testing.assert_allclose(
      np.exp(c.sampling_logprob_B), emit[c.token_B], rtol=2e-5
  )
  return emit, accept


def _logits(probs):
  return np.array([np.log(x) if x > 0 else NEG for x in probs])


def test_top_k_membership_and_multiple_proposals():
  # Teacher mostly proposes 0 and 1, which are not in the student's top-2
  # {5, 2}; only 2 can be accepted, so several proposals are often needed.
  zt = _logits([0.5, 0.3, 0.2, 0, 0, 0, 0, 0])
  zs = _logits([0.15, 0, 0.3, 0, 0, 0.5, 0, 0.05])
  params = rsd_rule.RSDParams(
      threshold=0.01, num_proposals=3, top_k=2, teacher_top_k=8,
      teacher_temperature=1.0, teacher_top_p=1.0, student_temperature=1.0,
      student_top_p=1.0,
  )  # fmt: skip
  c = _run_rule(zt, zs, params)
  _, accept = _check_against_reference(c, zt, zs, params)
  np.testing.assert_array_equal(np.flatnonzero(accept), [2])
  # Token 0 (student prob 0.15, outside its top-2) is never emitted.
  assert not np.any(c.token_B == 0)
  assert set(np.unique(c.proposal_B)) == {-1, 0, 1, 2}


@pytest.mark.parametrize("mode", ["after", "before"])
def test_threshold_on_student_prob_before_or_after_temperature(mode):
  # Token 3: raw student prob 0.03 >= 0.01, but 0.0011 after T_s = 0.5.
  zt = _logits([0.3, 0, 0, 0.7, 0, 0, 0, 0])
  zs = _logits([0.9, 0, 0, 0.03, 0.07, 0, 0, 0])
  params = rsd_rule.RSDParams(
      threshold=0.01, num_proposals=2, top_k=3, teacher_temperature=1.0,
      teacher_top_p=1.0, student_temperature=0.5, student_top_p=1.0,
      student_prob=mode,
  )  # fmt: skip
  c = _run_rule(zt, zs, params, seed=1)
  _, accept = _check_against_reference(c, zt, zs, params)
  assert accept[3] == (mode == "before")
  teacher_rate = c.from_teacher_B.mean()
  assert abs(teacher_rate - (1.0 if mode == "before" else 1 - 0.7**2)) < 0.02


@pytest.mark.parametrize("probe_k", [1, 5, 64])
def test_student_nucleus_probe_and_full_sort_agree(probe_k):
  # The probe holds max(top_k, probe_k) tokens. Top-3 mass 0.75 < 0.9:
  # probe_k = 1 takes the bisection branch; top-5 mass 0.92 >= 0.9: probe_k
  # = 5 reads the nucleus off the probe; 64 >= V probes everything.
  zt = _logits([0.1, 0.2, 0.3, 0.25, 0.15, 0, 0, 0])
  zs = _logits([0.05, 0.3, 0.25, 0.2, 0.12, 0.05, 0.02, 0.01])
  params = rsd_rule.RSDParams(
      threshold=0.21, num_proposals=2, top_k=3, teacher_temperature=1.0,
      teacher_top_p=1.0, student_temperature=1.0, student_top_p=0.9,
      probe_k=probe_k,
  )  # fmt: skip
  c = _run_rule(zt, zs, params, seed=2)
  _, accept = _check_against_reference(c, zt, zs, params)
  # p_S is renormalised over the nucleus (mass 0.92): token 3 has
  # 0.2 / 0.92 >= 0.21 > 0.2, so it is accepted only with the right mass.
  assert accept[3]


def test_threshold_zero_full_top_k_is_teacher_sampling_on_fixed_logits():
  zt = np.random.RandomState(0).randn(8) * 1.5
  zs = np.random.RandomState(1).randn(8) * 1.5
  params = rsd_rule.RSDParams(threshold=0.0, top_k=8, teacher_top_p=0.9)
  c = _run_rule(zt, zs, params, seed=3)
  assert np.all(c.from_teacher_B) and np.all(c.proposal_B == 0)
  _check_against_reference(c, zt, zs, params)


def test_threshold_above_one_is_pure_student_sampling_on_fixed_logits():
  zt = np.random.RandomState(2).randn(8) * 1.5
  zs = np.random.RandomState(3).randn(8) * 1.5
  params = rsd_rule.RSDParams(threshold=1.5, top_k=4)
  c = _run_rule(zt, zs, params, seed=4)
  assert not np.any(c.from_teacher_B) and np.all(c.proposal_B == -1)
  _check_against_reference(c, zt, zs, params)


# ----------------------------------------------------------------------------
# The jitted loop on two tiny models with padded embeddings.
# ----------------------------------------------------------------------------

V = 64  # the shared "tokenizer"; the teacher embeds 72 rows (padded)
PROMPTS = [[5, 17, 3], [9, 1, 44, 2, 7, 31, 8], [60, 6, 12, 19, 4]]


@pytest.fixture(scope="module")
def pair():
  base = models.get_config(
      "tiny-qwen2", vocab_size=V, max_len=64, tie_embeddings=False
  )
  teacher = models.init_model(base.replace(vocab_size=72, d_model=96), seed=5)
  student = models.init_model(base.replace(num_layers=1), seed=6)
  return teacher, student


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens_BL, segment_ids_BL):
  return nnx.merge(graphdef, state)(tokens_BL, segment_ids_BL=segment_ids_BL)


def _full_logits(model, prompts_rows, tokens, lengths):
  """Uncached logits predicting each emitted token, [rows, T, V]."""
  t = tokens.shape[1]
  width = max(map(len, prompts_rows)) + t
  t_BL = np.zeros((len(prompts_rows), width), np.int32)
  s_BL = np.zeros_like(t_BL)
  for i, (p, n) in enumerate(zip(prompts_rows, lengths)):
    seq = list(p) + tokens[i, :n].tolist()
    t_BL[i, : len(seq)], s_BL[i, : len(seq)] = seq, 1
  logits = np.asarray(_forward(*nnx.split(model), t_BL, s_BL))
  out = np.zeros((len(prompts_rows), t, V))
  for i, p in enumerate(prompts_rows):
    out[i] = logits[i, len(p) - 1 : len(p) - 1 + t, :V]
  return out


def _log_softmax(z):
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _check_run(out, teacher, student, prompts, params, n):
  """Recomputes both models uncached and checks every emitted token."""
  rows = [p for p in prompts for _ in range(n)]
  zt = _full_logits(teacher, rows, out.tokens, out.lengths)
  zs = _full_logits(student, rows, out.tokens, out.lengths)
  for b in range(len(rows)):
    for t in range(out.lengths[b]):
      tok = out.tokens[b, t]
      emit, _, _, accept = reference_rule(
          zt[b, t], zs[b, t], params, enumerate_proposals=False
      )
      if out.from_teacher[b, t]:
        assert accept[tok], (b, t)
      np.testing.assert_allclose(
          np.exp(out.sampling_logprobs[b, t]), emit[tok], rtol=2e-3
      )
    n_b = out.lengths[b]
    np.testing.assert_allclose(
        out.logprobs[b, :n_b],
        _log_softmax(zs[b, :n_b])[np.arange(n_b), out.tokens[b, :n_b]],
        atol=1e-4,
    )
    np.testing.assert_allclose(
        out.teacher_logprobs[b, :n_b],
        _log_softmax(zt[b, :n_b])[np.arange(n_b), out.tokens[b, :n_b]],
        atol=1e-4,
    )
    assert not out.from_teacher[b, n_b:].any()
    assert np.all(out.proposal[b, n_b:] == -1)
    np.testing.assert_allclose(
        out.fallback_rate[b], 1.0 - out.from_teacher[b, :n_b].mean(), atol=1e-6
    )
  np.testing.assert_array_equal(out.from_teacher, out.proposal >= 0)


def test_rule_tokens_provenance_logprobs_and_eos(pair):
  teacher, student = pair
  kw = dict(threshold=0.02, num_proposals=3, top_k=8)
  eos = (40, 41, 42)  # 3 of 64 ids: some rows end early, others do not
  out = gen.rsd_generate(
      teacher, student, PROMPTS, max_new_tokens=10, rng=7, vocab_size=V, n=2,
      eos_ids=eos, pad_id=63, **kw,
  )  # fmt: skip
  assert out.tokens.shape == (6, 10)
  # Every emitted token, provenance and log-prob against uncached forwards
  # of both models on the emitted sequences (so both caches stayed in sync,
  # also for rows decoding next to rows that had ended).
  _check_run(out, teacher, student, PROMPTS, rsd_rule.RSDParams(**kw), n=2)
  # Both provenances occur with these weak, unrelated models.
  assert 0 < out.from_teacher.mean() < 1
  for b in range(6):
    n, row = out.lengths[b], out.tokens[b].tolist()
    ends = [j for j, x in enumerate(row[:n]) if x in eos]
    if out.finish_reason[b] == "eos":
      assert ends == [n - 1]
    else:
      assert out.finish_reason[b] == "length" and n == 10 and not ends
    assert row[n:] == [63] * (10 - n)
  assert {"eos", "length"} <= set(out.finish_reason)
  valid = np.arange(10)[None] < out.lengths[:, None]
  want = (out.from_teacher & valid).sum(0) / valid.sum(0)
  np.testing.assert_allclose(out.acceptance_by_position, want)


def test_threshold_zero_top_k_vocab_equals_teacher_sampler(pair):
  teacher, student = pair
  out = gen.rsd_generate(
      teacher, student, PROMPTS, max_new_tokens=10, rng=3, threshold=0.0,
      top_k=V, teacher_temperature=0.8, teacher_top_p=0.9, vocab_size=V,
  )  # fmt: skip
  ref = gen.generate(
      teacher, PROMPTS, max_new_tokens=10, temperature=0.8, top_k=V,
      top_p=0.9, rng=3, vocab_size=V,
  )  # fmt: skip
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  assert out.from_teacher.all() and (out.proposal == 0).all()
  np.testing.assert_allclose(out.teacher_logprobs, ref.logprobs, atol=1e-5)
  np.testing.assert_array_equal(out.fallback_rate, 0.0)


def test_threshold_above_one_is_pure_student(pair):
  teacher, student = pair
  kw = dict(threshold=1.5, top_k=6, student_top_p=0.8, student_temperature=0.9)
  out = gen.rsd_generate(
      teacher, student, PROMPTS, max_new_tokens=10, rng=4, vocab_size=V, **kw
  )
  assert not out.from_teacher.any() and (out.proposal == -1).all()
  np.testing.assert_array_equal(out.fallback_rate, 1.0)
  _check_run(out, teacher, student, PROMPTS, rsd_rule.RSDParams(**kw), n=1)


@pytest.mark.slow  # ~15 s: two more RSD compilations (the sampler's
# mesh tests cover batch sharding in the default run)
def test_rsd_on_mesh_gives_single_device_tokens(pair):
  teacher, student = pair
  kw = dict(max_new_tokens=6, rng=8, vocab_size=V, n=2, top_k=8)
  prompts = PROMPTS + [[2, 2]]
  ref = gen.rsd_generate(teacher, student, prompts, **kw)
  mesh = sharding.make_mesh((4, 1, 2))
  out = gen.rsd_generate(teacher, student, prompts, mesh=mesh, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.from_teacher, ref.from_teacher)


# ----------------------------------------------------------------------------
# Vocabulary and tokenizer checks, bad input.
# ----------------------------------------------------------------------------


def _tokenizer(words, eos="<eos>"):
  vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<alt>", *words])}
  backend = hf_tokenizers.Tokenizer(
      hf_tokenizers.models.WordLevel(vocab, unk_token="<pad>")
  )
  return tokenizers.Tokenizer.create(
      backend, special_tokens={"eos_token": eos, "pad_token": "<pad>"}
  )


def test_shared_vocab_size_handles_padded_embeddings(pair):
  t_cfg, s_cfg = pair[0].cfg, pair[1].cfg
  with pytest.raises(ValueError, match=r"differ in width \(72 vs 64\)"):
    reverse_spec.shared_vocab_size(t_cfg, s_cfg)
  assert reverse_spec.shared_vocab_size(t_cfg, s_cfg, 60) == 60
  with pytest.raises(ValueError, match="does not fit the student's 64"):
    reverse_spec.shared_vocab_size(t_cfg, s_cfg, 70)
  tok = _tokenizer(["a", "b", "c"])
  assert reverse_spec.shared_vocab_size(t_cfg, s_cfg, None, tok, tok) == 6


def test_mismatched_tokenizers_are_refused(pair):
  t_cfg, s_cfg = pair[0].cfg, pair[1].cfg
  a = _tokenizer(["a", "b", "c"])
  with pytest.raises(ValueError, match="tokenizers are not compatible"):
    reverse_spec.shared_vocab_size(
        t_cfg, s_cfg, None, a, _tokenizer(["a", "x", "c"])
    )
  with pytest.raises(ValueError, match="end generations on different ids"):
    reverse_spec.shared_vocab_size(
        t_cfg, s_cfg, None, a, _tokenizer(["a", "b", "c"], eos="<alt>")
    )
  with pytest.raises(ValueError, match="pass both teacher_tokenizer"):
    reverse_spec.shared_vocab_size(t_cfg, s_cfg, None, a, None)
  with pytest.raises(ValueError, match="differs from the tokenizers'"):
    reverse_spec.shared_vocab_size(t_cfg, s_cfg, 5, a, a)
  teacher, student = pair
  with pytest.raises(ValueError, match="tokenizers are not compatible"):
    gen.rsd_generate(
        teacher, student, [[1, 2]], 4, rng=0, teacher_tokenizer=a,
        student_tokenizer=_tokenizer(["b", "a", "c"]),
    )  # fmt: skip


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_proposals=0), "num_proposals must be an integer >= 1"),
        (dict(threshold=-0.1), "threshold must be >= 0"),
        (dict(teacher_temperature=0.0), "teacher_temperature must be > 0"),
        (dict(student_top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(student_prob="during"), "student_prob must be one of"),
        (dict(top_k=65), "top_k=65 exceeds the shared vocabulary size 64"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive"),
        (dict(rng=None), "rsd_generate samples; pass rng"),
        (dict(prompts=[[1], []]), "prompt 1 is empty"),
        (dict(prompts=[[1] * 60]), "exceeds the cache length 64"),
        (dict(vocab_size=None), r"differ in width \(72 vs 64\)"),
    ],
)
def test_bad_rsd_input_raises(pair, kw, match):
  args = dict(prompts=[[1, 2]], max_new_tokens=8, rng=0, vocab_size=V)
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    gen.rsd_generate(*pair, **args)
