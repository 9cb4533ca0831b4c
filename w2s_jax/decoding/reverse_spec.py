"""Reverse speculative decoding (RSD, docs/methods.md, "RSD") as one jitted while_loop.

Legend: B rows (prompts x samples), P prompt length, T new tokens, V shared
vocab, Kt teacher candidates, Ks student candidates, J proposals per step.

Teacher and student decode in lockstep, each with its own KV cache, inside
one ``lax.while_loop``. Per step, with logits zT and zS of the shared context:

* Teacher proposal distribution cat_T: softmax(zT / T_t), top-p nucleus on
  the full vocabulary, then its ``teacher_top_k`` best, renormalised.
* Student set S_ids: its ``top_k`` highest-logit tokens. p_S(c) is the
  student's processed probability q(c) ("after": softmax(zS / T_s) with the
  top-p nucleus applied, renormalised over the nucleus, not over the top-k;
  0 outside the nucleus) or its raw softmax(zS)(c) ("before", as an engine
  that reports unprocessed log-probs; T_s and the student top-p then play
  no part).
* Up to J proposals c_j ~ cat_T, one PRNG key per trial; the first with
  c_j in S_ids and p_S(c_j) >= threshold is emitted (provenance TEACHER).
  If none is accepted, the token is drawn from p_S renormalised over S_ids
  (provenance STUDENT, a fallback). The token is appended to both caches.

The probability of the emitted token under this procedure is exact and
cheap: with A the accepted set and r = cat_T(A),
``P(c) = cat_T(c)·[c ∈ A]·(1 − (1 − r)^J)/r + (1 − r)^J·p̃_S(c)`` (p̃_S:
p_S renormalised over S_ids); it is
returned as ``sampling_logprobs`` (the behaviour policy of the traces).

No full-vocabulary sort per step: the candidates come from ``lax.top_k``;
the student's nucleus mass (needed for p_S "after") is read off a
``probe_k``-token probe and only when some row's nucleus is larger than the
probe (near-uniform distributions) found, under ``lax.cond``, by the
sort-free bisection ``sampling_params.nucleus_keep``.

Logits of both models are sliced to the shared tokenizer vocabulary V before
anything else: Qwen checkpoints pad their embeddings (151,936 vs 152,064).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from w2s_jax import sharding
from w2s_jax.decoding import rsd_rule, unembedding
from w2s_jax.decoding import sampler as sampler_lib
from w2s_jax.decoding import sampling_params as sp_lib
from w2s_jax.models import config as model_config
from w2s_jax.models import kv_cache

RSDParams = rsd_rule.RSDParams
RSDChoice = rsd_rule.RSDChoice
rsd_choose = rsd_rule.rsd_choose
STUDENT_PROB_MODES = rsd_rule.STUDENT_PROB_MODES


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


@struct.dataclass
class RSDState:
  """Loop carry: the student's ``SamplingState`` plus the teacher's side.

  Attributes:
    s: tokens, student raw log-probs, RSD sampling log-probs, EOS
      bookkeeping and the student's cache.
    teacher_cache: the teacher's KV cache.
    teacher_logprobs_BT: raw teacher log-probs of the emitted tokens.
    from_teacher_BT: provenance (False on fallbacks and padding).
    proposal_BT: accepted proposal index, -1 on fallbacks and padding.
  """

  s: sampler_lib.SamplingState
  teacher_cache: kv_cache.Cache
  teacher_logprobs_BT: jax.Array
  from_teacher_BT: jax.Array
  proposal_BT: jax.Array


@struct.dataclass
class RSDOutput:
  """Device results (rows: prompt b, sample j at b*n+j)."""

  tokens_BT: jax.Array
  lengths_B: jax.Array
  logprobs_BT: jax.Array
  teacher_logprobs_BT: jax.Array
  sampling_logprobs_BT: jax.Array
  finish_B: jax.Array
  from_teacher_BT: jax.Array
  proposal_BT: jax.Array
  fallback_rate_B: jax.Array


@dataclasses.dataclass(frozen=True)
class RSDConfig:
  """Static settings: the shared decode settings plus the RSD rule."""

  decode: sampler_lib.DecodeConfig
  rsd: RSDParams = RSDParams()


def _step(st: RSDState, config: RSDConfig, zt_BV, zs_BV) -> RSDState:
  s, dc = st.s, config.decode
  c = rsd_choose(jax.random.fold_in(s.rng, s.step), zt_BV, zs_BV, config.rsd)
  tok_B, valid_B, done_B, finish_B = sampler_lib.finish_update(
      c.token_B, s.done_B, s.finish_B, dc
  )
  step = s.step  # the column of this token (s is rebound below)
  col = lambda buf, x: sampler_lib.write_column(buf, step, x)
  zero = lambda x: jnp.where(valid_B, x, 0.0)
  s = s.replace(
      step=s.step + 1,
      last_token_B=tok_B,
      tokens_BT=col(s.tokens_BT, tok_B),
      logprobs_BT=col(
          s.logprobs_BT, zero(sp_lib.token_logprobs(zs_BV, c.token_B))
      ),
      sampling_logprobs_BT=col(
          s.sampling_logprobs_BT, zero(c.sampling_logprob_B)
      ),
      lengths_B=s.lengths_B + valid_B.astype(jnp.int32),
      done_B=done_B,
      finish_B=finish_B,
  )
  return st.replace(
      s=s,
      teacher_logprobs_BT=col(
          st.teacher_logprobs_BT, zero(sp_lib.token_logprobs(zt_BV, c.token_B))
      ),
      from_teacher_BT=col(st.from_teacher_BT, c.from_teacher_B & valid_B),
      proposal_BT=col(st.proposal_BT, jnp.where(valid_B, c.proposal_B, -1)),
  )


Pair = tuple[Any, Any]  # (teacher, student)


def rsd_prefill(
    graphdefs: Pair,
    states: Pair,
    prompt_tokens_BP: jax.Array,
    prompt_segment_ids_BP: jax.Array,
    rng: jax.Array,
    config: RSDConfig,
    vocab_size: int,
) -> RSDState:
  """Encodes the prompts with both models and emits the first token.

  Args:
    graphdefs: (teacher, student) graph definitions.
    states: (teacher, student) parameters.
    prompt_tokens_BP: left-padded prompt ids.
    prompt_segment_ids_BP: 1 on prompt tokens, 0 on padding.
    rng: PRNG key.
    config: static settings.
    vocab_size: shared vocabulary V.

  Returns:
    The loop state with one token emitted.
  """
  teacher, student = map(nnx.merge, graphdefs, states)
  dc = config.decode
  cache_len = prompt_tokens_BP.shape[1] + dc.max_new_tokens
  args = (prompt_tokens_BP, prompt_segment_ids_BP, cache_len, dc.n, vocab_size)
  zt_BV, teacher_cache, _ = sampler_lib.prefill_model(teacher, *args)
  zs_BV, student_cache, prompt_len_B = sampler_lib.prefill_model(student, *args)
  rows = zs_BV.shape[0]
  s = sampler_lib.SamplingState(
      step=jnp.int32(0),
      last_token_B=jnp.zeros((rows,), jnp.int32),
      prompt_len_B=prompt_len_B,
      cache=student_cache,
      rng=rng,
      **sampler_lib.init_outputs(rows, dc.max_new_tokens, dc.pad_id),
  )
  shape = (rows, dc.max_new_tokens)
  shard = lambda x: sharding.shard(x, "batch", "length")
  st = RSDState(
      s=s,
      teacher_cache=teacher_cache,
      teacher_logprobs_BT=shard(jnp.zeros(shape, jnp.float32)),
      from_teacher_BT=shard(jnp.zeros(shape, bool)),
      proposal_BT=shard(jnp.full(shape, -1, jnp.int32)),
  )
  return _step(st, config, zt_BV, zs_BV)


def rsd_decode(
    graphdefs: Pair,
    states: Pair,
    st: RSDState,
    config: RSDConfig,
    vocab_size: int,
    unembeds_DV: Pair = (None, None),
) -> RSDState:
  """Runs both models in lockstep to the end (traceable, not jitted).

  ``unembeds_DV``: (teacher, student) ``unembedding.decode_unembedding``
  copies of tied tables (CPU), or None to use the models' own weights.
  """
  teacher, student = map(nnx.merge, graphdefs, states)
  teacher_DV, student_DV = unembeds_DV

  def cond(st: RSDState):
    return (st.s.step < config.decode.max_new_tokens) & ~jnp.all(st.s.done_B)

  def body(st: RSDState):
    s = st.s
    position_B = s.prompt_len_B + s.step - 1
    step = lambda m, cache, w_DV: sampler_lib.decode_model(
        m, s.last_token_B, position_B, cache, vocab_size, w_DV
    )
    zt_BV, teacher_cache = step(teacher, st.teacher_cache, teacher_DV)
    zs_BV, student_cache = step(student, s.cache, student_DV)
    st = st.replace(
        s=s.replace(cache=student_cache), teacher_cache=teacher_cache
    )
    return _step(st, config, zt_BV, zs_BV)

  return jax.lax.while_loop(cond, body, st)


def to_output(st: RSDState) -> RSDOutput:
  """Results of a finished ``RSDState``; fallback rate over emitted tokens."""
  s = st.s
  accepted_B = jnp.sum(st.from_teacher_BT, axis=1, dtype=jnp.int32)
  return RSDOutput(
      tokens_BT=s.tokens_BT,
      lengths_B=s.lengths_B,
      logprobs_BT=s.logprobs_BT,
      teacher_logprobs_BT=st.teacher_logprobs_BT,
      sampling_logprobs_BT=s.sampling_logprobs_BT,
      finish_B=sampler_lib.final_finish(s.finish_B),
      from_teacher_BT=st.from_teacher_BT,
      proposal_BT=st.proposal_BT,
      fallback_rate_B=(s.lengths_B - accepted_B) / jnp.maximum(s.lengths_B, 1),
  )


def _make_jits(rules):
  static = ("graphdefs", "config", "vocab_size")

  @functools.partial(jax.jit, static_argnames=static)
  def prefill_jit(
      graphdefs, states, tokens_BP, seg_BP, rng, config, vocab_size
  ):
    with sharding.axis_rules(rules):
      return rsd_prefill(
          graphdefs, states, tokens_BP, seg_BP, rng, config, vocab_size
      )

  # The state (both KV caches) is donated and returned whole, so the loop
  # updates the prefill's caches in place rather than copying them into a
  # second pair of cache-sized buffers held for the whole decode.
  @functools.partial(jax.jit, static_argnames=static, donate_argnames=("st",))
  def decode_jit(graphdefs, states, st, config, vocab_size, unembeds_DV):
    with sharding.axis_rules(rules):
      return rsd_decode(graphdefs, states, st, config, vocab_size, unembeds_DV)

  return prefill_jit, decode_jit


_jits: dict[Any, tuple[Callable, Callable]] = {}


def make_rsd_sampler(
    graphdefs: Pair,
    cfgs: Pair,
    config: RSDConfig,
    vocab_size: int,
    rules: sharding.Rules | None = None,
) -> Callable[[Pair, jax.Array, jax.Array, jax.Array], RSDOutput]:
  """A device-only RSD sampler.

  Args:
    graphdefs: (teacher, student) graph definitions.
    cfgs: (teacher, student) ``TransformerConfig``s.
    config: static settings.
    vocab_size: the shared tokenizer vocabulary (see ``shared_vocab_size``).
    rules: logical-axis rules traced in (default: the active table).

  Returns:
    ``sample((teacher_state, student_state), prompt_tokens_BP,
    prompt_segment_ids_BP, rng)`` -> ``RSDOutput`` (device arrays).
  """
  for cfg, who in zip(cfgs, ("teacher", "student")):
    if vocab_size > cfg.vocab_size:
      raise ValueError(
          f"vocab_size={vocab_size} exceeds the {who}'s embedding rows"
          f" ({cfg.vocab_size}); the models do not share this tokenizer."
      )
  config.rsd.check_vocab(vocab_size)
  sampler_lib.check_vocab_size(
      dataclasses.replace(config.decode, vocab_size=vocab_size), cfgs[1]
  )
  rules = sharding.current_rules() if rules is None else tuple(rules)
  if rules not in _jits:
    _jits[rules] = _make_jits(rules)
  prefill_jit, decode_jit = _jits[rules]
  graphdefs = tuple(graphdefs)
  static = dict(graphdefs=graphdefs, config=config, vocab_size=vocab_size)

  def sample(states, prompt_tokens_BP, prompt_segment_ids_BP, rng):
    for cfg in cfgs:
      sampler_lib.check_prompt_shape(
          cfg, prompt_tokens_BP.shape[1], config.decode.max_new_tokens
      )
    states = tuple(states)
    st = prefill_jit(
        states=states,
        tokens_BP=prompt_tokens_BP,
        seg_BP=prompt_segment_ids_BP,
        rng=rng,
        **static,
    )
    unembeds_DV = tuple(map(unembedding.decode_unembedding, cfgs, states))
    return to_output(
        decode_jit(states=states, st=st, unembeds_DV=unembeds_DV, **static)
    )

  return sample


def shared_vocab_size(
    teacher_cfg: model_config.TransformerConfig,
    student_cfg: model_config.TransformerConfig,
    vocab_size: int | None = None,
    teacher_tokenizer: Any = None,
    student_tokenizer: Any = None,
) -> int:
  """The vocabulary RSD compares ids in; refuses models that cannot share it.

  Args:
    teacher_cfg: the teacher's config.
    student_cfg: the student's config.
    vocab_size: the shared tokenizer's size (Qwen embeddings are padded past
      it: 151,936 vs 152,064 rows); default: the tokenizers' size, else the
      models' common embedding size.
    teacher_tokenizer: optional ``w2s_jax.data.tokenizers.Tokenizer``.
    student_tokenizer: optional, checked against the teacher's.

  Returns:
    The size V both models' logits are sliced to.

  Raises:
    ValueError: different tokenizers (vocabulary or EOS ids), a vocabulary
      larger than either embedding, or padded widths with no ``vocab_size``.
  """
  if (teacher_tokenizer is None) != (student_tokenizer is None):
    raise ValueError(
        "pass both teacher_tokenizer and student_tokenizer (or neither):"
        " RSD checks that they are the same tokenizer."
    )
  if teacher_tokenizer is not None:
    check_tokenizers(teacher_tokenizer, student_tokenizer)
    tok_v = int(teacher_tokenizer.vocab_size)
    if vocab_size is not None and int(vocab_size) != tok_v:
      raise ValueError(
          f"vocab_size={vocab_size} differs from the tokenizers' vocabulary"
          f" size {tok_v}; leave vocab_size unset."
      )
    vocab_size = tok_v
  if vocab_size is None:
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
      raise ValueError(
          "teacher and student logits differ in width"
          f" ({teacher_cfg.vocab_size} vs {student_cfg.vocab_size}); if they"
          " share a tokenizer whose embedding was padded (Qwen), pass"
          " vocab_size=<tokenizer size> or the tokenizers; otherwise RSD"
          " cannot compare their token ids."
      )
    vocab_size = teacher_cfg.vocab_size
  vocab_size = int(vocab_size)
  for cfg, who in ((teacher_cfg, "teacher"), (student_cfg, "student")):
    if not 0 < vocab_size <= cfg.vocab_size:
      raise ValueError(
          f"vocab_size={vocab_size} does not fit the {who}'s"
          f" {cfg.vocab_size} embedding rows; teacher and student must share"
          " one tokenizer."
      )
  return vocab_size


def check_tokenizers(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
  """Raises ValueError unless both tokenizers map ids the same way.

  Uses ``w2s_jax.data.tokenizers.check_compatible`` (the id -> token table)
  and additionally requires equal EOS ids, since RSD stops on them.
  """
  from w2s_jax.data import tokenizers  # noqa: PLC0415  (heavy import)

  tokenizers.check_compatible(
      teacher_tokenizer, student_tokenizer, what="teacher/student"
  )
  t_eos, s_eos = teacher_tokenizer.eos_ids, student_tokenizer.eos_ids
  if tuple(t_eos) != tuple(s_eos):
    raise ValueError(
        "teacher/student tokenizers end generations on different ids"
        f" ({tuple(t_eos)} vs {tuple(s_eos)}); RSD needs one tokenizer:"
        " load both from the same tokenizer files."
    )
