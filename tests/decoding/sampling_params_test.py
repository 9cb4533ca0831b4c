"""Sampling transforms: distributions against a float64 numpy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.decoding import sampling_params as sp

NUM_SAMPLES = 20_000
# Distinct logits (no ties), V = 12.
LOGITS_V = np.array(
    [2.0, 1.6, 1.1, 0.9, 0.5, 0.3, 0.0, -0.2, -0.7, -1.0, -1.6, -2.5],
    np.float32,
)[
    [3, 0, 7, 1, 10, 5, 2, 11, 4, 9, 6, 8]
]  # shuffled: order != id order


def reference_probs(z, temperature, top_k=0, top_p=1.0, min_p=0.0):
  """Processed distribution in float64, written from the definitions."""
  z = np.asarray(z, np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  p = np.exp(z - z.max())
  p /= p.sum()
  keep = np.ones_like(p, bool)
  if top_k:
    keep[order[top_k:]] = False
    p = np.where(keep, p, 0.0)
    p /= p.sum()
  if top_p < 1.0:
    mass_before = 0.0
    for i in order:
      if not keep[i]:
        continue
      if mass_before >= top_p:
        keep[i] = False
      mass_before += p[i]
    p = np.where(keep, p, 0.0)
    p /= p.sum()
  if min_p > 0.0:
    keep &= p >= min_p * p.max()
    p = np.where(keep, p, 0.0)
    p /= p.sum()
  return p


def chi2_pvalue(counts, probs):
  """Pearson chi-square p-value over the support of probs."""
  counts, probs = np.asarray(counts, float), np.asarray(probs, float)
  assert counts[probs == 0].sum() == 0, "sampled outside the support"
  support = probs > 0
  n = counts.sum()
  expected = probs[support] * n
  stat = float(((counts[support] - expected) ** 2 / expected).sum())
  dof = int(support.sum()) - 1
  if dof == 0:
    return 1.0
  try:
    from scipy import stats  # noqa: PLC0415

    return float(stats.chi2.sf(stat, dof))
  except ImportError:  # Wilson-Hilferty: chi2 quantile at p = 1e-3
    z = 3.090232306167813
    q = dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3
    return 1.0 if stat < q else 0.0


@functools.partial(jax.jit, static_argnames=("params", "probe_k"))
def _draw(key, logits_BV, params, probe_k=sp.TOP_P_PROBE):
  return sp.sample_logits(key, logits_BV, params, probe_k)


CASES = {
    "temperature": (dict(temperature=0.7), sp.TOP_P_PROBE),
    "top_k": (dict(temperature=1.3, top_k=4), sp.TOP_P_PROBE),
    # V = 12 <= probe: the nucleus is found with one full top_k.
    "top_p": (dict(temperature=1.0, top_p=0.8), sp.TOP_P_PROBE),
    # Probe of 4 tokens holds the 0.5-nucleus: the probe branch.
    "top_p_probe": (dict(temperature=1.0, top_p=0.5), 4),
    # Probe of 4 tokens is too small for 0.95: the bisection branch.
    "top_p_bisection": (dict(temperature=1.0, top_p=0.95), 4),
    "min_p": (dict(temperature=1.0, min_p=0.2), sp.TOP_P_PROBE),
    "combined": (
        dict(temperature=0.8, top_k=7, top_p=0.9, min_p=0.05),
        sp.TOP_P_PROBE,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_empirical_distribution_matches_reference(name):
  kw, probe_k = CASES[name]
  params = sp.SamplingParams(**kw)
  ref = reference_probs(LOGITS_V, **kw)
  if name == "top_p_probe":  # make sure each branch is the one exercised
    assert np.sort(reference_probs(LOGITS_V, 1.0))[::-1][:4].sum() >= 0.5
  if name == "top_p_bisection":
    assert np.sort(reference_probs(LOGITS_V, 1.0))[::-1][:4].sum() < 0.95
  logits_BV = jnp.broadcast_to(LOGITS_V, (NUM_SAMPLES, LOGITS_V.size))
  tok_B, logp_B = _draw(jax.random.key(7), logits_BV, params, probe_k)
  tok_B, logp_B = np.asarray(tok_B), np.asarray(logp_B)
  counts = np.bincount(tok_B, minlength=LOGITS_V.size)
  assert chi2_pvalue(counts, ref) > 1e-3, (counts / NUM_SAMPLES, ref)
  # The reported log-prob is that of the processed distribution.
  np.testing.assert_allclose(np.exp(logp_B), ref[tok_B], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_processed_logprobs_match_reference(name):
  kw, _ = CASES[name]
  got = sp.processed_logprobs(
      jnp.asarray(LOGITS_V)[None], sp.SamplingParams(**kw)
  )
  np.testing.assert_allclose(
      np.exp(np.asarray(got[0], np.float64)),
      reference_probs(LOGITS_V, **kw),
      atol=1e-6,
  )


def test_greedy_is_argmax_with_zero_sampling_logprob():
  logits_BV = jax.random.normal(jax.random.key(0), (5, 33))
  tok_B, logp_B = sp.sample_logits(None, logits_BV, sp.SamplingParams())
  np.testing.assert_array_equal(tok_B, np.argmax(np.asarray(logits_BV), -1))
  np.testing.assert_array_equal(logp_B, 0.0)
  lp = sp.processed_logprobs(logits_BV, sp.SamplingParams())
  np.testing.assert_array_equal(np.argmax(np.asarray(lp), -1), tok_B)
  assert np.isneginf(np.asarray(lp)).sum() == 5 * 32


def test_same_key_same_tokens_other_key_other_tokens():
  params = sp.SamplingParams(temperature=1.0, top_k=6)
  logits_BV = jax.random.normal(jax.random.key(1), (64, 40))
  a = _draw(jax.random.key(3), logits_BV, params)[0]
  b = _draw(jax.random.key(3), logits_BV, params)[0]
  c = _draw(jax.random.key(4), logits_BV, params)[0]
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_token_logprobs_are_raw_log_softmax():
  logits_BV = jax.random.normal(jax.random.key(2), (3, 17)) * 3
  tok_B = jnp.array([0, 16, 5])
  z = np.asarray(logits_BV, np.float64)
  ref = z[np.arange(3), [0, 16, 5]] - np.log(np.exp(z).sum(-1))
  np.testing.assert_allclose(
      sp.token_logprobs(logits_BV, tok_B), ref, atol=1e-5
  )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be finite"),
        (dict(temperature="hot"), "temperature must be a real number"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(top_k=2.5), "top_k must be an integer >= 0"),
        (dict(top_k=True), "top_k must be an integer >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(min_p=-0.1), r"min_p must be in \[0, 1\]"),
        (dict(min_p=1.01), r"min_p must be in \[0, 1\]"),
    ],
)
def test_invalid_parameters_raise(kw, match):
  with pytest.raises(ValueError, match=match):
    sp.SamplingParams(**kw)


def test_top_k_larger_than_vocab_raises():
  params = sp.SamplingParams(temperature=1.0, top_k=13)
  with pytest.raises(
      ValueError, match="top_k=13 exceeds the vocabulary size 12"
  ):
    sp.sample_logits(jax.random.key(0), jnp.asarray(LOGITS_V)[None], params)


def test_params_are_hashable_and_normalised():
  a = sp.SamplingParams(np.float32(0.5), np.int64(3), 1, 0)
  b = sp.SamplingParams(0.5, 3, 1.0, 0.0)
  assert a == b and hash(a) == hash(b)
  assert isinstance(a.top_k, int) and isinstance(a.top_p, float)


def _reference_nucleus(p, top_p):
  keep = np.zeros(p.shape, bool)
  for b in range(p.shape[0]):
    before = 0.0
    for i in np.argsort(-p[b], kind="stable"):  # ties: lower id first
      if before >= top_p:
        break
      keep[b, i] = True
      before += p[b, i]
  return keep


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("ways", [2, 3, 16])
def test_nucleus_bisection_equals_sorted_definition(top_p, ties, ways):
  # ways: 2 is CPU's bisection, 16 the accelerators' search (forced here).
  z = np.random.RandomState(5).randn(6, 3000) * 2.0
  if ties:  # coarse logits: large groups of equal probabilities
    z = np.round(z * 2) / 2
  z = jnp.asarray(z, jnp.float32)
  p = jax.nn.softmax(z, axis=-1)
  keep, mass = jax.jit(sp.nucleus_keep, static_argnums=(1, 2))(p, top_p, ways)
  p64 = np.asarray(p, np.float64)
  want = _reference_nucleus(p64, top_p)
  np.testing.assert_array_equal(np.asarray(keep), want)
  np.testing.assert_allclose(mass, (p64 * want).sum(-1), rtol=1e-5)
  mass_only = jax.jit(sp.nucleus_mass, static_argnums=(1, 2))(p, top_p, ways)
  np.testing.assert_array_equal(mass_only, mass)  # RSD's path: no membership
  if ties:  # the boundary really cuts through a tie group somewhere
    cut = [
        np.unique(p64[b][want[b]]).min() in set(p64[b][~want[b]])
        for b in range(6)
    ]
    assert any(cut)


def test_nucleus_search_passes_and_bad_ways():
  # Worst-case passes to shrink the bracket [0, bits(1.0) + 1) to width 1.
  span = int(np.float32(1.0).view(np.int32)) + 1
  assert sp._search_passes(2, span) == 30  # 2^29 < span <= 2^30
  assert sp._search_passes(16, span) == 8  # 16^7 < span <= 16^8
  assert sp._search_passes(16, 1) == 0
  with pytest.raises(ValueError, match="ways must be >= 2"):
    sp.nucleus_keep(jnp.ones((1, 4)) / 4, 0.5, ways=1)
