"""Jitted autoregressive sampling with a KV cache: prefill + one while_loop.

Legend: B batch (prompts x samples), P prompt length (left-padded), T new
tokens, S cache slots (P + T), V vocab, K kv heads, H head dim.

Two jitted functions, both pure in ``(graphdef, state)`` so that a trainer can
sample from its current parameters without any host round trip of weights:

* ``prefill``: runs the prompts through the model once, fills a fresh cache
  of ``P + T`` slots, repeats it ``n`` times per prompt (the prompt is
  encoded once, not n times), draws the first token and returns a
  ``SamplingState``.
* ``decode``: one ``lax.while_loop`` over the ``SamplingState``; each
  iteration feeds the last token, draws the next one and writes it. The loop
  stops when every row has finished or after T tokens.

Ragged prompts are left-padded (segment id 0 on pads), so every row writes the
same cache slot each step; RoPE positions count real tokens only. A row ends
at its first EOS (``finish_reason`` 'eos') or stop id ('stop'); that token is
kept, and later slots hold ``pad_id`` with log-prob 0. Rows that never end
finish with 'length'.

Randomness: the token of step t is drawn with ``step_key(rng, t, 0)`` (RSD
uses trials 0.. of the same key), from one key for the whole batch. With
partitionable threefry (JAX's default) the draw does not depend on how the
batch is sharded, so a mesh run reproduces the single-device tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from w2s_jax import sharding
from w2s_jax.decoding import sampling_params as sp_lib
from w2s_jax.decoding import unembedding
from w2s_jax.models import config as model_config
from w2s_jax.models import kv_cache

FINISH_NONE, FINISH_EOS, FINISH_STOP, FINISH_LENGTH = 0, 1, 2, 3
FINISH_REASONS = ("", "eos", "stop", "length")


def step_key(rng: jax.Array, step: jax.Array | int, trial: int) -> jax.Array:
  """The PRNG key of one random draw: ``trial`` at decode step ``step``."""
  return jax.random.fold_in(jax.random.fold_in(rng, step), trial)


@struct.dataclass
class SamplingState:
  """The loop carry of ``decode`` (everything per row is batch-sharded).

  Attributes:
    step: int32 scalar, tokens emitted so far (the next column to write).
    last_token_B: the token emitted at ``step - 1`` (the next model input).
    prompt_len_B: real prompt tokens; position of token t is prompt_len + t.
    tokens_BT: emitted tokens, ``pad_id`` after a row ends.
    logprobs_BT: raw model log-probs (temperature 1) of the tokens.
    sampling_logprobs_BT: log-probs under the distribution sampled from.
    lengths_B: tokens emitted so far (the ending token included).
    done_B: the row emitted an EOS or stop id.
    finish_B: FINISH_* code (FINISH_NONE while running).
    cache: the KV cache.
    rng: the base PRNG key.
  """

  step: jax.Array
  last_token_B: jax.Array
  prompt_len_B: jax.Array
  tokens_BT: jax.Array
  logprobs_BT: jax.Array
  sampling_logprobs_BT: jax.Array
  lengths_B: jax.Array
  done_B: jax.Array
  finish_B: jax.Array
  cache: kv_cache.Cache
  rng: jax.Array


@struct.dataclass
class SamplerOutput:
  """Device arrays returned by a sampler (rows: prompt b, sample j at b*n+j).

  Attributes:
    tokens_BT: new tokens, ``pad_id`` after EOS/stop.
    lengths_B: tokens emitted per row (the EOS/stop token included).
    logprobs_BT: raw model log-probs of the tokens (0 on padding).
    sampling_logprobs_BT: log-probs under the sampling distribution.
    finish_B: FINISH_EOS, FINISH_STOP or FINISH_LENGTH.
  """

  tokens_BT: jax.Array
  lengths_B: jax.Array
  logprobs_BT: jax.Array
  sampling_logprobs_BT: jax.Array
  finish_B: jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Static settings of a sampler (hashable: a jit static argument).

  Attributes:
    max_new_tokens: T, tokens to generate at most.
    params: the sampling parameters.
    n: samples per prompt.
    eos_ids: ids that end a row with 'eos'.
    stop_ids: further ids that end a row with 'stop'.
    pad_id: written after a row ends.
    vocab_size: logits are sliced to this many entries before sampling (the
      tokenizer's size when the embedding is padded); None = all.
  """

  max_new_tokens: int
  params: sp_lib.SamplingParams = sp_lib.SamplingParams()
  n: int = 1
  eos_ids: tuple[int, ...] = ()
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  vocab_size: int | None = None

  def __post_init__(self):
    t, n = self.max_new_tokens, self.n
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t <= 0:
      raise ValueError(f"max_new_tokens must be a positive integer, got {t!r}.")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
      raise ValueError(f"n (samples per prompt) must be >= 1, got {n!r}.")
    object.__setattr__(self, "max_new_tokens", int(t))
    object.__setattr__(self, "n", int(n))
    object.__setattr__(self, "eos_ids", _id_tuple("eos_ids", self.eos_ids))
    object.__setattr__(self, "stop_ids", _id_tuple("stop_ids", self.stop_ids))
    if int(self.pad_id) < 0:
      raise ValueError(f"pad_id must be >= 0, got {self.pad_id}.")


def _id_tuple(name: str, ids: Any) -> tuple[int, ...]:
  if ids is None:
    return ()
  if isinstance(ids, (int, np.integer)):
    ids = (ids,)
  out = tuple(int(i) for i in ids)
  if any(i < 0 for i in out):
    raise ValueError(f"{name} must be non-negative token ids, got {out}.")
  return out


def check_vocab_size(
    config: DecodeConfig, cfg: model_config.TransformerConfig
) -> int:
  """The vocabulary sampled from; checks it against the model and the ids."""
  v = cfg.vocab_size if config.vocab_size is None else int(config.vocab_size)
  if not 0 < v <= cfg.vocab_size:
    raise ValueError(
        f"vocab_size={v} must be in [1, {cfg.vocab_size}] (the model's"
        " embedding rows); pass the tokenizer's vocab size."
    )
  config.params.check_vocab(v)
  for name in ("eos_ids", "stop_ids"):
    bad = [i for i in getattr(config, name) if i >= v]
    if bad:
      raise ValueError(f"{name} {bad} are outside the vocabulary of size {v}.")
  return v


# ----------------------------------------------------------------------------
# Model pieces shared with RSD.
# ----------------------------------------------------------------------------


def _shard_cache(cache: kv_cache.Cache) -> kv_cache.Cache:
  names = ("batch", "cache_length", "act_kv_heads", None)
  # A scanned model's cache is stacked: [layers, B, S, K, H].
  shard = lambda x: sharding.shard(x, *(None,) * (x.ndim - 4), *names)
  layers = tuple(
      kv_cache.LayerCache(*(shard(x) for x in (layer.k_BSKH, layer.v_BSKH)))
      for layer in cache.layers
  )
  seg = sharding.shard(cache.segment_ids_BS, "batch", "cache_length")
  return cache.replace(layers=layers, segment_ids_BS=seg)


def unembed(
    model: Any, h_BD: jax.Array, unembed_DV: jax.Array | None = None
) -> jax.Array:
  """Logits ``[B, V]`` of final hidden states (``Transformer.logits``).

  A tied table is contracted as stored, ``[V, D]`` on D, unless a ``[D, V]``
  copy is given (see ``unembedding.decode_unembedding``): taking the
  transpose inside the loop makes XLA:CPU copy the whole matrix every step.
  """
  dt = h_BD.dtype
  if unembed_DV is not None:
    logits_BV = jnp.einsum("BD,DV->BV", h_BD, unembed_DV.astype(dt))
  elif model.cfg.tie_embeddings:
    w_VD = model.embed_VD.get_value().astype(dt)
    logits_BV = jnp.einsum("BD,VD->BV", h_BD, w_VD)
  else:
    logits_BV = jnp.einsum("BD,DV->BV", h_BD, model.unembedding_DV().astype(dt))
  return sharding.shard(logits_BV, "batch", "act_vocab")


def prefill_model(
    model: Any,
    tokens_BP: jax.Array,
    segment_ids_BP: jax.Array,
    cache_len: int,
    n: int,
    vocab_size: int,
) -> tuple[jax.Array, kv_cache.Cache, jax.Array]:
  """Encodes left-padded prompts into a fresh cache, repeated n times.

  Returns:
    ``(logits_BV, cache, prompt_len_B)`` for B = prompts * n rows: fp32
    logits of the last prompt position (sliced to ``vocab_size``), the cache
    with ``end_index = P``, and the number of real prompt tokens.
  """
  b = tokens_BP.shape[0]
  cache = kv_cache.init_cache(model.cfg, b, cache_len)
  # The cache is fresh: prefill attends over the prompt with the model's
  # attention backend (flash kernels on GPU/TPU), not over every slot.
  h_BPD, cache = model.hidden(
      tokens_BP, None, segment_ids_BP, cache, cache_is_empty=True
  )
  # Only the last position predicts a new token: skip P-1 vocab projections.
  logits_BV = unembed(model, h_BPD[:, -1])[:, :vocab_size]
  prompt_len_B = jnp.sum(segment_ids_BP != 0, axis=1, dtype=jnp.int32)
  if n > 1:
    rep = lambda x: jnp.repeat(x, n, axis=0)
    rep_kv = lambda x: jnp.repeat(x, n, axis=x.ndim - 4)  # stacked or not
    cache = cache.replace(
        layers=jax.tree.map(rep_kv, cache.layers),
        segment_ids_BS=rep(cache.segment_ids_BS),
    )
    logits_BV, prompt_len_B = rep(logits_BV), rep(prompt_len_B)
  cache = _shard_cache(cache)
  logits_BV = sharding.shard(logits_BV.astype(jnp.float32), "batch", None)
  return logits_BV, cache, sharding.shard(prompt_len_B, "batch")


def decode_model(
    model: Any,
    token_B: jax.Array,
    position_B: jax.Array,
    cache: kv_cache.Cache,
    vocab_size: int,
    unembed_DV: jax.Array | None = None,
) -> tuple[jax.Array, kv_cache.Cache]:
  """One cached step: fp32 logits ``[B, V]`` of the next token, new cache."""
  ones_B1 = jnp.ones((token_B.shape[0], 1), jnp.int32)
  h_B1D, cache = model.hidden(
      token_B[:, None], position_B[:, None], ones_B1, cache
  )
  logits_BV = unembed(model, h_B1D[:, 0], unembed_DV)[:, :vocab_size]
  return logits_BV.astype(jnp.float32), cache


def init_outputs(batch: int, max_new_tokens: int, pad_id: int) -> dict:
  """Empty per-row output buffers (tokens = pad, log-probs = 0)."""
  shape = (batch, max_new_tokens)
  shard = lambda x: sharding.shard(x, "batch", "length")
  return dict(
      tokens_BT=shard(jnp.full(shape, pad_id, jnp.int32)),
      logprobs_BT=shard(jnp.zeros(shape, jnp.float32)),
      sampling_logprobs_BT=shard(jnp.zeros(shape, jnp.float32)),
      lengths_B=sharding.shard(jnp.zeros((batch,), jnp.int32), "batch"),
      done_B=sharding.shard(jnp.zeros((batch,), bool), "batch"),
      finish_B=sharding.shard(jnp.zeros((batch,), jnp.int32), "batch"),
  )


def finish_update(
    token_B: jax.Array,
    done_B: jax.Array,
    finish_B: jax.Array,
    config: DecodeConfig,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Applies EOS/stop to a freshly drawn token.

  Returns:
    ``(token_out_B, valid_B, done_B, finish_B)``: the token to store (pad on
    rows that had already ended), whether it counts, and the updated flags.
  """
  valid_B = ~done_B
  token_out_B = jnp.where(valid_B, token_B, config.pad_id).astype(jnp.int32)
  is_eos_B = jnp.isin(token_B, jnp.asarray(config.eos_ids or (-1,)))
  is_stop_B = jnp.isin(token_B, jnp.asarray(config.stop_ids or (-1,)))
  code_B = jnp.where(is_eos_B, FINISH_EOS, FINISH_STOP)
  ends_B = valid_B & (is_eos_B | is_stop_B)
  finish_B = jnp.where(ends_B, code_B, finish_B)
  return token_out_B, valid_B, done_B | ends_B, finish_B


def write_column(buf_BT: jax.Array, step: jax.Array, col_B: jax.Array):
  """buf[:, step] = col, as an in-place dynamic_update_slice."""
  col_B1 = col_B[:, None].astype(buf_BT.dtype)
  return jax.lax.dynamic_update_slice(buf_BT, col_B1, (jnp.int32(0), step))


def final_finish(finish_B: jax.Array) -> jax.Array:
  """Rows still running after the loop ran out of steps end with 'length'."""
  return jnp.where(finish_B == FINISH_NONE, FINISH_LENGTH, finish_B)


# ----------------------------------------------------------------------------
# The sampler.
# ----------------------------------------------------------------------------


def _record(s: SamplingState, config, token_B, logprob_B, slogprob_B):
  tok_B, valid_B, done_B, finish_B = finish_update(
      token_B, s.done_B, s.finish_B, config
  )
  zero = lambda x: jnp.where(valid_B, x, 0.0)
  return s.replace(
      step=s.step + 1,
      last_token_B=tok_B,
      tokens_BT=write_column(s.tokens_BT, s.step, tok_B),
      logprobs_BT=write_column(s.logprobs_BT, s.step, zero(logprob_B)),
      sampling_logprobs_BT=write_column(
          s.sampling_logprobs_BT, s.step, zero(slogprob_B)
      ),
      lengths_B=s.lengths_B + valid_B.astype(jnp.int32),
      done_B=done_B,
      finish_B=finish_B,
  )


def _draw(s: SamplingState, config: DecodeConfig, logits_BV: jax.Array):
  key = step_key(s.rng, s.step, 0)
  token_B, slogprob_B = sp_lib.sample_logits(key, logits_BV, config.params)
  logprob_B = sp_lib.token_logprobs(logits_BV, token_B)
  return _record(s, config, token_B, logprob_B, slogprob_B)


def prefill(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens_BP: jax.Array,
    prompt_segment_ids_BP: jax.Array,
    rng: jax.Array,
    config: DecodeConfig,
) -> SamplingState:
  """Encodes the prompts and draws the first token (traceable, not jitted).

  Args:
    graphdef: the model's graph definition (``nnx.split``).
    state: the model's parameters.
    prompt_tokens_BP: left-padded prompt ids for B prompts.
    prompt_segment_ids_BP: 1 on prompt tokens, 0 on the left padding.
    rng: PRNG key.
    config: static sampler settings.

  Returns:
    The loop state for ``B * n`` rows with one token emitted.
  """
  model = nnx.merge(graphdef, state)
  v = check_vocab_size(config, model.cfg)
  t = config.max_new_tokens
  cache_len = prompt_tokens_BP.shape[1] + t
  logits_BV, cache, prompt_len_B = prefill_model(
      model, prompt_tokens_BP, prompt_segment_ids_BP, cache_len, config.n, v
  )
  rows = logits_BV.shape[0]
  s = SamplingState(
      step=jnp.int32(0),
      last_token_B=jnp.zeros((rows,), jnp.int32),
      prompt_len_B=prompt_len_B,
      cache=cache,
      rng=rng,
      **init_outputs(rows, t, config.pad_id),
  )
  return _draw(s, config, logits_BV)


def decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    s: SamplingState,
    config: DecodeConfig,
    unembed_DV: jax.Array | None = None,
) -> SamplingState:
  """Runs the decode ``while_loop`` to the end (traceable, not jitted).

  ``unembed_DV`` is ``unembedding.decode_unembedding``'s copy of a tied
  table (CPU), or None to unembed with the model's own weights.
  """
  model = nnx.merge(graphdef, state)
  v = check_vocab_size(config, model.cfg)

  def cond(s: SamplingState):
    return (s.step < config.max_new_tokens) & ~jnp.all(s.done_B)

  def body(s: SamplingState):
    position_B = s.prompt_len_B + s.step - 1  # of last_token_B
    logits_BV, cache = decode_model(
        model, s.last_token_B, position_B, s.cache, v, unembed_DV
    )
    return _draw(s.replace(cache=cache), config, logits_BV)

  return jax.lax.while_loop(cond, body, s)


def to_output(s: SamplingState) -> SamplerOutput:
  """The results held by a finished ``SamplingState``."""
  return SamplerOutput(
      tokens_BT=s.tokens_BT,
      lengths_B=s.lengths_B,
      logprobs_BT=s.logprobs_BT,
      sampling_logprobs_BT=s.sampling_logprobs_BT,
      finish_B=final_finish(s.finish_B),
  )


def _jit_prefill(rules):
  @functools.partial(jax.jit, static_argnames=("graphdef", "config"))
  def run(graphdef, state, tokens_BP, segment_ids_BP, rng, config):
    with sharding.axis_rules(rules):
      return prefill(graphdef, state, tokens_BP, segment_ids_BP, rng, config)

  return run


def _jit_decode(rules):
  # The SamplingState is donated and returned whole: its KV cache is the
  # largest buffer of the loop, and aliasing input to output lets the
  # while_loop update the prefill's cache in place, instead of copying it into
  # a second cache-sized carry and holding both for the whole decode.
  @functools.partial(
      jax.jit, static_argnames=("graphdef", "config"), donate_argnames=("s",)
  )
  def run(graphdef, state, s, config, unembed_DV):
    with sharding.axis_rules(rules):
      return decode(graphdef, state, s, config, unembed_DV)

  return run


# One compiled pair per rules table (a context variable, so it must be part of
# the cache key); jax.jit caches by graphdef, config and shapes within each.
_prefill_jits: dict[Any, Callable] = {}
_decode_jits: dict[Any, Callable] = {}


def jitted(rules: sharding.Rules | None = None) -> tuple[Callable, Callable]:
  """The jitted ``(prefill, decode)`` pair for a logical-axis rules table."""
  rules = sharding.current_rules() if rules is None else tuple(rules)
  if rules not in _prefill_jits:
    _prefill_jits[rules] = _jit_prefill(rules)
    _decode_jits[rules] = _jit_decode(rules)
  return _prefill_jits[rules], _decode_jits[rules]


def check_prompt_shape(
    cfg: model_config.TransformerConfig,
    prompt_len: int,
    max_new_tokens: int,
    max_len: int | None = None,
) -> None:
  """Raises ValueError when prompt + new tokens do not fit the cache."""
  max_len = cfg.max_len if max_len is None else int(max_len)
  if max_len > cfg.max_len:
    raise ValueError(
        f"max_len={max_len} exceeds the model's max_len {cfg.max_len}; raise"
        " TransformerConfig.max_len if the model supports longer contexts."
    )
  if prompt_len + max_new_tokens > max_len:
    raise ValueError(
        f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} ="
        f" {prompt_len + max_new_tokens} exceeds the cache length {max_len};"
        " shorten the prompts, lower max_new_tokens or raise max_len."
    )


def make_sampler(
    graphdef: nnx.GraphDef,
    cfg: model_config.TransformerConfig,
    config: DecodeConfig,
    rules: sharding.Rules | None = None,
) -> Callable[[nnx.State, jax.Array, jax.Array, jax.Array], SamplerOutput]:
  """A device-only sampler for one model architecture.

  Args:
    graphdef: the model's graph definition; parameters come per call.
    cfg: the model config (used for shape checks).
    config: static sampler settings.
    rules: logical-axis rules traced into the sampler (default: the table
      active now; use ``sharding.SAMPLING_RULES`` on a mesh).

  Returns:
    ``sample(state, prompt_tokens_BP, prompt_segment_ids_BP, rng)`` ->
    ``SamplerOutput`` (device arrays, no host sync). Prompts must be
    left-padded with at least one real token per row; P + T must fit
    ``cfg.max_len``. Call it under ``jax.set_mesh(mesh)`` to shard the batch.
  """
  check_vocab_size(config, cfg)
  prefill_jit, decode_jit = jitted(rules)

  def sample(state, prompt_tokens_BP, prompt_segment_ids_BP, rng):
    if prompt_tokens_BP.ndim != 2 or (
        prompt_tokens_BP.shape != prompt_segment_ids_BP.shape
    ):
      raise ValueError(
          "prompt_tokens_BP and prompt_segment_ids_BP must both be [B, P],"
          f" got {prompt_tokens_BP.shape} and {prompt_segment_ids_BP.shape}."
      )
    check_prompt_shape(cfg, prompt_tokens_BP.shape[1], config.max_new_tokens)
    s = prefill_jit(
        graphdef, state, prompt_tokens_BP, prompt_segment_ids_BP, rng, config
    )
    unembed_DV = unembedding.decode_unembedding(cfg, state)
    return to_output(decode_jit(graphdef, state, s, config, unembed_DV))

  return sample
