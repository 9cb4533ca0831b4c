"""Host-side decoding API: prompt preparation, ``generate`` and its output.

Legend: B prompts (times n samples in outputs), P prompt length, T new tokens.

Everything here runs on the host around the jitted pieces of
``decoding.sampler``: prompts are validated and left-padded in numpy, the
width is rounded up to a bucket so that nearby lengths reuse one compiled
sampler, parameters and prompts are placed on a mesh when one is given, and
results come back as numpy arrays with string finish reasons.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2s_jax import sharding
from w2s_jax.decoding import sampler as sampler_lib
from w2s_jax.decoding import sampling_params as sp_lib

PromptsLike = Sequence[Sequence[int]] | np.ndarray | jax.Array


def prepare_prompts(
    prompts: PromptsLike,
    prompt_lengths: Sequence[int] | np.ndarray | None = None,
    *,
    padding_side: str = "left",
    pad_id: int = 0,
    vocab_size: int | None = None,
    width: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Validates prompts and left-pads them for the sampler.

  Args:
    prompts: a list of token-id lists, or a ``[B, P]`` int array (padded on
      ``padding_side`` when ``prompt_lengths`` is given, else unpadded).
    prompt_lengths: real tokens per row of an array.
    padding_side: 'left' or 'right', the padding of an array.
    pad_id: id written on padding.
    vocab_size: when given, every id must be below it.
    width: pad to this many columns (>= the longest prompt).

  Returns:
    ``(tokens_BP, segment_ids_BP)`` int32 numpy arrays, left-padded.
  """
  if padding_side not in ("left", "right"):
    raise ValueError(
        f"padding_side must be 'left' or 'right', got {padding_side!r}."
    )
  if isinstance(prompts, (np.ndarray, jax.Array)):
    arr = np.asarray(prompts)
    if arr.ndim != 2:
      raise ValueError(
          f"a prompt array must be [B, P], got shape {arr.shape}; pass a list"
          " of token-id lists for ragged prompts."
      )
    if prompt_lengths is None:
      lengths = np.full((arr.shape[0],), arr.shape[1])
    else:
      lengths = np.asarray(prompt_lengths).reshape(-1)
      if lengths.shape != (arr.shape[0],):
        raise ValueError(
            f"prompt_lengths has {lengths.size} entries for {arr.shape[0]}"
            " prompts; give one length per row."
        )
      if np.any(lengths > arr.shape[1]) or np.any(lengths < 0):
        raise ValueError(
            f"prompt_lengths {lengths.tolist()} must be in [0, {arr.shape[1]}]"
            " (the array width)."
        )
    rows = [
        (r[r.size - n :] if padding_side == "left" else r[:n]).tolist()
        for r, n in zip(arr, lengths.astype(int))
    ]
  else:
    if prompt_lengths is not None:
      raise ValueError(
          "prompt_lengths is only for a padded prompt array; a list of"
          " token-id lists carries its own lengths."
      )
    if isinstance(prompts, (str, bytes)):
      raise ValueError("prompts must be token ids; tokenize the text first.")
    rows = [list(p) for p in prompts]
  if not rows:
    raise ValueError("prompts is empty; pass at least one prompt.")
  for i, row in enumerate(rows):
    if not row:
      raise ValueError(
          f"prompt {i} is empty; every prompt needs at least one token (e.g."
          " BOS or the chat template's header)."
      )
    ids = np.asarray(row)
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(
          f"prompt {i} holds {ids.dtype} values; prompts are integer token ids."
      )
    if ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size):
      raise ValueError(
          f"prompt {i} has ids outside [0, {vocab_size}): min {ids.min()},"
          f" max {ids.max()}; was it tokenized for another model?"
      )
  longest = max(len(r) for r in rows)
  width = longest if width is None else int(width)
  if width < longest:
    raise ValueError(f"width={width} is below the longest prompt ({longest}).")
  tokens_BP = np.full((len(rows), width), pad_id, np.int32)
  segment_ids_BP = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    tokens_BP[i, width - len(row) :] = row
    segment_ids_BP[i, width - len(row) :] = 1
  return tokens_BP, segment_ids_BP


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
  """Host (numpy) results of ``generate``; row b*n + j is sample j of prompt b.

  Attributes:
    tokens: ``[B*n, T]`` new tokens, ``pad_id`` after the ending token.
    lengths: ``[B*n]`` tokens per row, EOS/stop token included.
    logprobs: ``[B*n, T]`` raw model log-probs (temperature 1), 0 on padding.
    sampling_logprobs: ``[B*n, T]`` log-probs under the sampling distribution.
    finish_reason: ``[B*n]`` 'eos', 'stop' or 'length'.
    n: samples per prompt.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  logprobs: np.ndarray
  sampling_logprobs: np.ndarray
  finish_reason: np.ndarray
  n: int

  @property
  def prompt_index(self) -> np.ndarray:
    return np.arange(self.tokens.shape[0]) // self.n

  def completions(self) -> list[list[int]]:
    """The tokens of each row without padding."""
    return [r[:n].tolist() for r, n in zip(self.tokens, self.lengths)]


def finish_strings(finish_B: Any) -> np.ndarray:
  return np.asarray(sampler_lib.FINISH_REASONS, dtype=object)[
      np.asarray(finish_B)
  ]


def resolve_rng(rng: Any, greedy: bool) -> jax.Array:
  """A PRNG key from a key or an int seed; greedy decoding needs none."""
  if rng is None:
    if not greedy:
      raise ValueError(
          "rng is required when sampling (temperature > 0); pass"
          " rng=jax.random.key(seed)."
      )
    return jax.random.key(0)
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return jax.random.key(int(rng))
  return rng


def _bucket(p: int, max_new_tokens: int, max_len: int, multiple: int) -> int:
  # Round the prompt width up so nearby lengths share one compiled sampler.
  return max(p, min(-(-p // multiple) * multiple, max_len - max_new_tokens))


def place(
    mesh: jax.sharding.Mesh | None,
    rules: sharding.Rules,
    state: Any,
    *arrays: np.ndarray,
) -> tuple[Any, ...]:
  """Parameters by their logical axes, arrays batch-sharded; no-op without mesh."""
  if mesh is None:
    return (state, *(jnp.asarray(a) for a in arrays))
  state = jax.device_put(state, sharding.state_shardings(state, mesh, rules))
  out = []
  for a in arrays:
    names = ("batch",) + (None,) * (a.ndim - 1)
    spec = sharding.logical_to_spec(names, a.shape, mesh, rules)
    out.append(jax.device_put(a, jax.sharding.NamedSharding(mesh, spec)))
  return (state, *out)


def generate(
    model: nnx.Module,
    prompts: PromptsLike,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    n: int = 1,
    rng: jax.Array | int | None = None,
    eos_ids: Sequence[int] | int = (),
    stop_ids: Sequence[int] | int = (),
    pad_id: int = 0,
    *,
    prompt_lengths: Sequence[int] | np.ndarray | None = None,
    padding_side: str = "left",
    vocab_size: int | None = None,
    max_len: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding.Rules = sharding.SAMPLING_RULES,
    bucket: int = 8,
) -> GenerateOutput:
  """Samples continuations of token-id prompts.

  Args:
    model: a ``Transformer`` (split here; use ``make_sampler`` in a loop).
    prompts: list of token-id lists, or a padded ``[B, P]`` array with
      ``prompt_lengths``.
    max_new_tokens: T.
    temperature: 0 for greedy.
    top_k: 0 = off.
    top_p: 1 = off.
    min_p: 0 = off.
    n: samples per prompt.
    rng: PRNG key or int seed (required unless greedy).
    eos_ids: ids that end a row ('eos').
    stop_ids: extra ids that end a row ('stop').
    pad_id: fill after a row ends (and prompt padding).
    prompt_lengths: real tokens per row of a prompt array.
    padding_side: padding side of a prompt array.
    vocab_size: sample from the first ``vocab_size`` logits (a tokenizer
      smaller than the padded embedding); default all.
    max_len: limit on prompt + new tokens (default ``cfg.max_len``).
    mesh: shard the batch (and tensor-parallel weights) over this mesh.
    rules: logical-axis rules on the mesh.
    bucket: prompt widths are rounded up to a multiple of this.

  Returns:
    A ``GenerateOutput`` of numpy arrays.
  """
  cfg = model.cfg
  config = sampler_lib.DecodeConfig(
      max_new_tokens=max_new_tokens,
      params=sp_lib.SamplingParams(temperature, top_k, top_p, min_p),
      n=n,
      eos_ids=eos_ids,
      stop_ids=stop_ids,
      pad_id=pad_id,
      vocab_size=vocab_size,
  )
  v = sampler_lib.check_vocab_size(config, cfg)
  tokens_BP, seg_BP = prepare_prompts(
      prompts,
      prompt_lengths,
      padding_side=padding_side,
      pad_id=pad_id,
      vocab_size=v,
  )
  max_len = cfg.max_len if max_len is None else int(max_len)
  sampler_lib.check_prompt_shape(
      cfg, tokens_BP.shape[1], max_new_tokens, max_len
  )
  width = _bucket(tokens_BP.shape[1], max_new_tokens, max_len, bucket)
  tokens_BP, seg_BP = prepare_prompts(
      tokens_BP, seg_BP.sum(1), pad_id=pad_id, width=width
  )
  key = resolve_rng(rng, config.params.greedy)
  graphdef, state = nnx.split(model)
  ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with ctx:
    state, tokens_BP, seg_BP = place(mesh, rules, state, tokens_BP, seg_BP)
    sample = sampler_lib.make_sampler(
        graphdef, cfg, config, rules if mesh else None
    )
    out = jax.device_get(sample(state, tokens_BP, seg_BP, key))
  return GenerateOutput(
      tokens=np.asarray(out.tokens_BT),
      lengths=np.asarray(out.lengths_B),
      logprobs=np.asarray(out.logprobs_BT),
      sampling_logprobs=np.asarray(out.sampling_logprobs_BT),
      finish_reason=finish_strings(out.finish_B),
      n=config.n,
  )


@dataclasses.dataclass(frozen=True)
class RSDGenerateOutput(GenerateOutput):
  """``GenerateOutput`` plus RSD provenance (rows as in ``GenerateOutput``).

  Attributes:
    logprobs: raw *student* log-probs of the tokens.
    teacher_logprobs: raw teacher log-probs of the tokens.
    sampling_logprobs: log-probs under the whole RSD procedure.
    from_teacher: ``[B*n, T]`` True where a teacher proposal was accepted.
    proposal: ``[B*n, T]`` index of the accepted proposal, -1 otherwise.
    fallback_rate: ``[B*n]`` share of emitted tokens sampled by the student.
  """

  teacher_logprobs: np.ndarray = None
  from_teacher: np.ndarray = None
  proposal: np.ndarray = None
  fallback_rate: np.ndarray = None

  @property
  def acceptance_by_position(self) -> np.ndarray:
    """``[T]`` share of emitted tokens at each position that the teacher
    proposed (NaN where no row emitted a token)."""
    valid_BT = np.arange(self.tokens.shape[1])[None] < self.lengths[:, None]
    count_T = valid_BT.sum(0)
    accepted_T = (self.from_teacher & valid_BT).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(count_T > 0, accepted_T / count_T, np.nan)


def rsd_generate(
    teacher: nnx.Module,
    student: nnx.Module,
    prompts: PromptsLike,
    max_new_tokens: int = 128,
    rng: jax.Array | int | None = None,
    threshold: float = 0.01,
    num_proposals: int = 5,
    top_k: int = 20,
    teacher_temperature: float = 0.7,
    teacher_top_p: float = 0.95,
    student_temperature: float = 0.7,
    student_top_p: float = 0.95,
    student_prob: str = "after",
    vocab_size: int | None = None,
    eos_ids: Sequence[int] | int = (),
    stop_ids: Sequence[int] | int = (),
    pad_id: int = 0,
    n: int = 1,
    *,
    teacher_top_k: int | None = None,
    teacher_tokenizer: Any = None,
    student_tokenizer: Any = None,
    prompt_lengths: Sequence[int] | np.ndarray | None = None,
    padding_side: str = "left",
    max_len: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: sharding.Rules = sharding.SAMPLING_RULES,
    bucket: int = 8,
) -> RSDGenerateOutput:
  """Reverse speculative decoding of token-id prompts (docs/methods.md, "RSD").

  Args:
    teacher: the proposing model.
    student: the model whose distribution filters the proposals.
    prompts: as in ``generate``.
    max_new_tokens: T.
    rng: PRNG key or int seed (required).
    threshold: minimum student probability of an accepted proposal.
    num_proposals: teacher proposals per step.
    top_k: student set size (and teacher candidates unless
      ``teacher_top_k``).
    teacher_temperature: teacher sampling temperature.
    teacher_top_p: teacher nucleus.
    student_temperature: student sampling temperature.
    student_top_p: student nucleus.
    student_prob: 'after' or 'before' the student's temperature/top-p.
    vocab_size: shared tokenizer size (needed when the embedding widths
      differ, e.g. padded Qwen checkpoints); default from the tokenizers.
    eos_ids: ids that end a row (the student's EOS).
    stop_ids: extra ids that end a row.
    pad_id: fill after a row ends.
    n: samples per prompt.
    teacher_top_k: teacher candidates (default ``top_k``).
    teacher_tokenizer: optional, checked against ``student_tokenizer``.
    student_tokenizer: optional.
    prompt_lengths: real tokens per row of a prompt array.
    padding_side: padding side of a prompt array.
    max_len: limit on prompt + new tokens (default: both models' max_len).
    mesh: shard the batch over this mesh.
    rules: logical-axis rules on the mesh.
    bucket: prompt widths are rounded up to a multiple of this.

  Returns:
    An ``RSDGenerateOutput`` of numpy arrays.
  """
  from w2s_jax.decoding import reverse_spec  # noqa: PLC0415  (import cycle)

  if rng is None:
    raise ValueError("rsd_generate samples; pass rng=jax.random.key(seed).")
  v = reverse_spec.shared_vocab_size(
      teacher.cfg, student.cfg, vocab_size, teacher_tokenizer,
      student_tokenizer,
  )  # fmt: skip
  config = reverse_spec.RSDConfig(
      decode=sampler_lib.DecodeConfig(
          max_new_tokens=max_new_tokens,
          n=n,
          eos_ids=eos_ids,
          stop_ids=stop_ids,
          pad_id=pad_id,
          vocab_size=v,
      ),
      rsd=reverse_spec.RSDParams(
          threshold=threshold,
          num_proposals=num_proposals,
          top_k=top_k,
          teacher_top_k=teacher_top_k,
          teacher_temperature=teacher_temperature,
          teacher_top_p=teacher_top_p,
          student_temperature=student_temperature,
          student_top_p=student_top_p,
          student_prob=student_prob,
      ),
  )
  config.rsd.check_vocab(v)
  tokens_BP, seg_BP = prepare_prompts(
      prompts, prompt_lengths, padding_side=padding_side, pad_id=pad_id,
      vocab_size=v,
  )  # fmt: skip
  limit = min(teacher.cfg.max_len, student.cfg.max_len)
  max_len = limit if max_len is None else int(max_len)
  for m in (teacher, student):
    sampler_lib.check_prompt_shape(
        m.cfg, tokens_BP.shape[1], max_new_tokens, max_len
    )
  width = _bucket(tokens_BP.shape[1], max_new_tokens, max_len, bucket)
  tokens_BP, seg_BP = prepare_prompts(
      tokens_BP, seg_BP.sum(1), pad_id=pad_id, width=width
  )
  key = resolve_rng(rng, greedy=False)
  t_graphdef, t_state = nnx.split(teacher)
  s_graphdef, s_state = nnx.split(student)
  ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with ctx:
    t_state, tokens_BP, seg_BP = place(mesh, rules, t_state, tokens_BP, seg_BP)
    (s_state,) = place(mesh, rules, s_state)
    sample = reverse_spec.make_rsd_sampler(
        (t_graphdef, s_graphdef),
        (teacher.cfg, student.cfg),
        config,
        v,
        rules if mesh else None,
    )
    out = jax.device_get(sample((t_state, s_state), tokens_BP, seg_BP, key))
  return RSDGenerateOutput(
      tokens=np.asarray(out.tokens_BT),
      lengths=np.asarray(out.lengths_B),
      logprobs=np.asarray(out.logprobs_BT),
      sampling_logprobs=np.asarray(out.sampling_logprobs_BT),
      finish_reason=finish_strings(out.finish_B),
      n=n,
      teacher_logprobs=np.asarray(out.teacher_logprobs_BT),
      from_teacher=np.asarray(out.from_teacher_BT),
      proposal=np.asarray(out.proposal_BT),
      fallback_rate=np.asarray(out.fallback_rate_B),
  )
