"""Sampling parameters and the logits -> token transforms behind the sampler.

Legend: B batch, V vocab, C candidate tokens kept for sampling (C <= V).

The processed distribution is built in the order of Hugging Face's logits
warpers (and vLLM's): temperature, then top-k, then top-p on the top-k
renormalised distribution, then min-p. Each step keeps the most probable
tokens, so the kept set is always a prefix of the tokens sorted by logit
(ties broken towards the lower id, as ``lax.top_k`` does):

* temperature T: ``softmax(z / T)``; T = 0 is greedy (argmax).
* top-k (k > 0): the k most probable tokens.
* top-p (p < 1): the smallest prefix whose mass is >= p, i.e. a token is kept
  iff the mass of the tokens ranked before it is < p (the first token always).
* min-p (m > 0): tokens with probability >= m * max probability. The ratio of
  two probabilities does not change under renormalisation, so this is a
  logit test ``z_i - z_max >= log m``.

Sorting the full vocabulary costs O(V log V) per row and step (about 45 ms
for V = 151,936 on one CPU core, more than a small model's forward), so it is
avoided: with top-k only the k best are extracted; top-p without top-k first
extracts a small probe (``probe_k`` tokens) and, via ``lax.cond``, only when
the nucleus of some row is larger than the probe, finds it with
``nucleus_keep``: a search over the float32 bit patterns of the
probabilities (on CPU a bisection, 30 fused passes over V, about 15x cheaper
than the sort; accelerators split 16 ways, 8 passes), with ties at the
boundary resolved by id as a sort would. All paths compute the
same distribution.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

# Tokens extracted before falling back to the bisection for top-p without
# top-k. lax.top_k costs about the same for 20 and 64 candidates.
TOP_P_PROBE = 64


def check_real(name: str, value: object) -> float:
  """``value`` as a finite float; ValueError naming ``name`` otherwise."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a real number, got {value!r}.")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}.")
  return value


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is drawn from a model's logits.

  Hashable and compared by value, so it is a static argument of the jitted
  sampler: changing it compiles a new loop, reusing it does not.

  Attributes:
    temperature: softmax temperature; 0 means greedy decoding.
    top_k: keep the k most probable tokens; 0 turns it off.
    top_p: nucleus mass in (0, 1]; 1 turns it off.
    min_p: keep tokens with probability >= min_p * max probability, in
      [0, 1]; 0 turns it off.
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0

  def __post_init__(self):
    t = check_real("temperature", self.temperature)
    if t < 0:
      raise ValueError(
          f"temperature must be >= 0 (0 = greedy), got {t}; pass 0.0 for"
          " argmax decoding or a positive value to sample."
      )
    k = self.top_k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
      raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {k!r}.")
    p = check_real("top_p", self.top_p)
    if not 0.0 < p <= 1.0:
      raise ValueError(
          f"top_p must be in (0, 1] (1 = off), got {p}; a nucleus of mass 0"
          " is empty."
      )
    m = check_real("min_p", self.min_p)
    if not 0.0 <= m <= 1.0:
      raise ValueError(f"min_p must be in [0, 1] (0 = off), got {m}.")
    object.__setattr__(self, "temperature", t)
    object.__setattr__(self, "top_k", int(k))
    object.__setattr__(self, "top_p", p)
    object.__setattr__(self, "min_p", m)

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  def check_vocab(self, vocab_size: int) -> None:
    """Raises ValueError when top_k exceeds the vocabulary."""
    if self.top_k > vocab_size:
      raise ValueError(
          f"top_k={self.top_k} exceeds the vocabulary size {vocab_size}; use"
          f" top_k <= {vocab_size} (or 0 to turn top-k off)."
      )


def top_p_keep(
    sorted_logits_BC: jax.Array, log_norm_B: jax.Array, top_p: float
) -> jax.Array:
  """Nucleus membership of candidates sorted by descending logit.

  Args:
    sorted_logits_BC: logits (already divided by the temperature), sorted in
      descending order along C.
    log_norm_B: log of the normaliser of the distribution the nucleus is
      taken in (logsumexp over the full vocabulary, or over the top-k).
    top_p: nucleus mass.

  Returns:
    Bool [B, C]: True iff the mass ranked before the candidate is < top_p.
  """
  probs_BC = jnp.exp(sorted_logits_BC - log_norm_B[:, None])
  before_BC = jnp.cumsum(probs_BC, axis=-1) - probs_BC
  # Rounding must never empty the nucleus: the top token is always in it.
  return (before_BC < top_p) | (jnp.arange(before_BC.shape[-1]) == 0)


def nucleus_search_ways() -> int:
  """Thresholds tried per pass of ``nucleus_keep``'s search, by backend.

  XLA:CPU evaluates each threshold as one more sequential pass over V (one
  pass: ~90 us at V = 151,936; 16 thresholds in one fused pass: ~790 us), so
  it bisects (30 passes). An accelerator reads V once per pass whatever the
  number of thresholds and pays a kernel per pass, so it splits the range
  16 ways (8 passes).
  """
  return 2 if jax.default_backend() == "cpu" else 16


def _search_passes(ways: int, span: int) -> int:
  """Passes that shrink [lo, hi) of width ``span`` to width 1 (worst case)."""
  n = 0
  while span > 1:
    span, n = -(-span // ways), n + 1
  return n


def _nucleus_search(probs_BV, top_p, ways):
  """The search of ``nucleus_keep``: (bits, tau's bits, ties kept, ties at
  tau, nucleus mass), per row."""
  ways = nucleus_search_ways() if ways is None else int(ways)
  if ways < 2:
    raise ValueError(f"ways must be >= 2, got {ways}.")
  p_BV = probs_BV.astype(jnp.float32)
  bits_BV = jax.lax.bitcast_convert_type(p_BV, jnp.int32)
  j_W = jnp.arange(1, ways, dtype=jnp.int32)  # the ways - 1 inner thresholds

  def split(_, lo_hi):
    # Invariant: mass(bits >= lo) >= top_p > mass(bits >= hi).
    lo_B, hi_B = lo_hi
    span_B = (hi_B - lo_B)[:, None]
    # lo + span * j / ways without int32 overflow (span < 2^30, ways small).
    t_BW = (
        lo_B[:, None] + (span_B // ways) * j_W + (span_B % ways) * j_W // ways
    )
    above_BWV = bits_BV[:, None, :] >= t_BW[:, :, None]
    mass_BW = jnp.sum(jnp.where(above_BWV, p_BV[:, None, :], 0), -1)
    # Masses fall as j rises: the last threshold that still holds top_p.
    n_ok_B = jnp.sum(mass_BW >= top_p, axis=-1)
    t_pad_BW = jnp.concatenate([lo_B[:, None], t_BW, hi_B[:, None]], axis=1)
    take = lambda i_B: jnp.take_along_axis(t_pad_BW, i_B[:, None], 1)[:, 0]
    return take(n_ok_B), take(n_ok_B + 1)

  b = p_BV.shape[0]
  one = int(np.float32(1.0).view(np.int32))  # bits of 1.0: hi = one + 1
  passes = _search_passes(ways, one + 1)
  lo_B, _ = jax.lax.fori_loop(
      0, passes, split, (jnp.zeros((b,), jnp.int32), jnp.full((b,), one + 1))
  )
  tau_B = jax.lax.bitcast_convert_type(lo_B, jnp.float32)
  mass_above_B = jnp.sum(jnp.where(bits_BV > lo_B[:, None], p_BV, 0), -1)
  n_tie_B = jnp.sum(bits_BV == lo_B[:, None], -1)
  # The i-th token tied at tau (by id) is in iff mass_above + i * tau < top_p.
  need_B = jnp.ceil((top_p - mass_above_B) / jnp.maximum(tau_B, 1e-30))
  need_B = jnp.maximum(need_B, 1.0)  # float: may exceed int32 for tiny tau
  mass_B = (
      mass_above_B + jnp.minimum(n_tie_B.astype(jnp.float32), need_B) * tau_B
  )
  return bits_BV, lo_B, need_B, n_tie_B, mass_B


def nucleus_mass(
    probs_BV: jax.Array, top_p: float, ways: int | None = None
) -> jax.Array:
  """The mass of ``nucleus_keep``'s nucleus, without its membership."""
  return _nucleus_search(probs_BV, top_p, ways)[-1]


def nucleus_keep(
    probs_BV: jax.Array, top_p: float, ways: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """Top-p nucleus of unsorted probabilities, without sorting.

  Non-negative float32 values order like their int32 bit patterns, so the
  largest probability tau with mass(p >= tau) >= top_p is found exactly by
  a search over the bits: each pass splits the bracket [lo, hi) into
  ``ways`` parts and keeps the one where the mass crosses top_p (2 ways:
  bisection, 30 passes). Tokens above tau are in the nucleus; of the tokens
  equal to tau, the lowest ids are added while the mass before them is <
  top_p, which is the sorted-order rule of ``top_p_keep`` with ties broken
  by id (the rank of each tie, a cumulative sum over V, is computed only
  when some row has more ties at tau than it keeps). Every ``ways`` gives
  the same result.

  Args:
    probs_BV: normalised probabilities (fp32).
    top_p: nucleus mass in (0, 1).
    ways: thresholds per pass + 1 (>= 2); None = ``nucleus_search_ways()``.

  Returns:
    ``(keep_BV, mass_B)``: membership and the nucleus mass.
  """
  bits_BV, lo_B, need_B, n_tie_B, mass_B = _nucleus_search(
      probs_BV, top_p, ways
  )

  def cut_through_ties():
    tie_BV = bits_BV == lo_B[:, None]
    rank_BV = jnp.cumsum(tie_BV, axis=-1) - 1
    return (bits_BV > lo_B[:, None]) | (tie_BV & (rank_BV < need_B[:, None]))

  keep_BV = jax.lax.cond(
      jnp.all(n_tie_B.astype(jnp.float32) <= need_B),
      lambda: bits_BV >= lo_B[:, None],  # every tie at tau is in
      cut_through_ties,
  )
  return keep_BV, mass_B


def min_p_keep(logits_BC: jax.Array, max_B: jax.Array, min_p: float):
  """min-p membership: p_i >= min_p * p_max, as a logit difference."""
  if min_p <= 0.0:
    return jnp.ones(logits_BC.shape, bool)
  return logits_BC - max_B[:, None] >= math.log(min_p)


def _draw(rng, cand_BC, ids_BC):
  """Samples a candidate; returns (token id, its log-prob under cand)."""
  idx_B = jax.random.categorical(rng, cand_BC, axis=-1)
  logp_BC = jax.nn.log_softmax(cand_BC, axis=-1)
  logp_B = jnp.take_along_axis(logp_BC, idx_B[:, None], axis=-1)[:, 0]
  if ids_BC is None:
    return idx_B.astype(jnp.int32), logp_B
  tok_B = jnp.take_along_axis(ids_BC, idx_B[:, None], axis=-1)[:, 0]
  return tok_B.astype(jnp.int32), logp_B


def _sorted_candidates(x_BV, k, top_p, min_p, log_norm_B=None):
  """Top-k candidates (sorted) masked by top-p and min-p; -inf = excluded."""
  vals_BC, ids_BC = jax.lax.top_k(x_BV, k)
  keep_BC = jnp.ones(vals_BC.shape, bool)
  if top_p < 1.0:
    if log_norm_B is None:  # nucleus of the top-k renormalised distribution
      log_norm_B = jax.nn.logsumexp(vals_BC, axis=-1)
    keep_BC &= top_p_keep(vals_BC, log_norm_B, top_p)
  # max, not vals_BC[:, 0]: XLA:CPU rewrites a slice of a top_k result into a
  # sort of the whole vocabulary.
  keep_BC &= min_p_keep(vals_BC, jnp.max(vals_BC, axis=-1), min_p)
  return jnp.where(keep_BC, vals_BC, -jnp.inf), ids_BC


def sample_logits(
    rng: jax.Array,
    logits_BV: jax.Array,
    params: SamplingParams,
    probe_k: int = TOP_P_PROBE,
) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row from the processed distribution.

  Args:
    rng: a PRNG key; the whole batch is drawn from it.
    logits_BV: raw model logits (any float dtype; computed in fp32).
    params: the sampling parameters (static).
    probe_k: candidates extracted before the bisection for top-p without
      top-k (a speed knob; the distribution does not depend on it).

  Returns:
    ``(tokens_B int32, sampling_logprobs_B fp32)``: the log-probability of
    each token under the processed distribution (0 for greedy: a point mass).
  """
  x_BV = logits_BV.astype(jnp.float32)
  v = x_BV.shape[-1]
  params.check_vocab(v)
  if params.greedy:
    tok_B = jnp.argmax(x_BV, axis=-1).astype(jnp.int32)
    return tok_B, jnp.zeros(tok_B.shape, jnp.float32)
  x_BV = x_BV / params.temperature
  if params.top_k:
    cand_BC, ids_BC = _sorted_candidates(
        x_BV, params.top_k, params.top_p, params.min_p
    )
    return _draw(rng, cand_BC, ids_BC)
  if params.top_p < 1.0:
    log_norm_B = jax.nn.logsumexp(x_BV, axis=-1)
    kp = min(v, probe_k)

    def from_probe():
      return _draw(
          rng,
          *_sorted_candidates(x_BV, kp, params.top_p, params.min_p, log_norm_B),
      )

    def from_bisection():
      keep_BV, _ = nucleus_keep(
          jnp.exp(x_BV - log_norm_B[:, None]), params.top_p
      )
      keep_BV &= min_p_keep(x_BV, jnp.max(x_BV, axis=-1), params.min_p)
      return _draw(rng, jnp.where(keep_BV, x_BV, -jnp.inf), None)

    if kp == v:  # the probe is the whole (small) vocabulary
      return from_probe()
    # The nucleus fits in the probe iff the probe's mass already reaches p.
    probe_vals_BC = jax.lax.top_k(x_BV, kp)[0]
    mass_B = jnp.sum(jnp.exp(probe_vals_BC - log_norm_B[:, None]), axis=-1)
    return jax.lax.cond(
        jnp.all(mass_B >= params.top_p), from_probe, from_bisection
    )
  keep_BV = min_p_keep(x_BV, jnp.max(x_BV, axis=-1), params.min_p)
  return _draw(rng, jnp.where(keep_BV, x_BV, -jnp.inf), None)


def processed_logprobs(
    logits_BV: jax.Array, params: SamplingParams
) -> jax.Array:
  """Full-vocabulary log-probs of the processed distribution (-inf = cut).

  The reference for what ``sample_logits`` draws from, and the behaviour
  policy's log-probs for importance ratios. Sorts the full vocabulary.

  Args:
    logits_BV: raw model logits.
    params: the sampling parameters; greedy gives log 1 at the argmax.

  Returns:
    fp32 ``[B, V]`` log-probabilities.
  """
  x_BV = logits_BV.astype(jnp.float32)
  b, v = x_BV.shape
  params.check_vocab(v)
  if params.greedy:
    hot_BV = jax.nn.one_hot(jnp.argmax(x_BV, axis=-1), v, dtype=bool)
    return jnp.where(hot_BV, 0.0, -jnp.inf)
  x_BV = x_BV / params.temperature
  k = params.top_k or v
  log_norm_B = None if params.top_k else jax.nn.logsumexp(x_BV, axis=-1)
  cand_BV, ids_BV = _sorted_candidates(
      x_BV, k, params.top_p, params.min_p, log_norm_B
  )
  logp_BC = jax.nn.log_softmax(cand_BV, axis=-1)
  out_BV = jnp.full((b, v), -jnp.inf, jnp.float32)
  return out_BV.at[jnp.arange(b)[:, None], ids_BV].set(logp_BC)


def token_logprobs(logits_BV: jax.Array, tokens_B: jax.Array) -> jax.Array:
  """Raw model log-probs (temperature 1, full vocabulary) of ``tokens_B``."""
  x_BV = logits_BV.astype(jnp.float32)
  picked_B = jnp.take_along_axis(x_BV, tokens_B[:, None], axis=-1)[:, 0]
  return picked_B - jax.nn.logsumexp(x_BV, axis=-1)
