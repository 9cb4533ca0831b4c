"""Job ``topk_cache``: a teacher's top-k log-probs over SFT data.

``make_topk_scorer`` is the jitted scorer (also used by ``ssb_data``);
the cache is an array_record file read by ``training.inputs.TopKBatches``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tqdm

from w2s_jax.data import topk_cache
from w2s_jax.training import inputs, pairing, trainer


def make_topk_scorer(
    model: Any, k: int, temperature: float, vocab_size: int
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """A jitted ``(tokens_BL, lengths_B) -> (ids_BLK, logprobs_BLK)``.

  Row t holds the model's top-k next-token log-probs of
  ``log_softmax(z[:vocab_size] / temperature)`` after ``tokens[: t + 1]``
  (the row of ``logits[:, t]``); rows are right-padded, padding rows are
  garbage. Call it with one fixed ``[B, L]`` shape to compile once.
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  graphdef, state = nnx.split(model)
  if not 1 <= k <= vocab_size:
    raise ValueError(
        f"cache.k={k} must be in [1, vocab_size={vocab_size}]; set"
        " --config.cache.k."
    )

  @jax.jit
  def score(state, tokens_BL, lengths_B):
    length = tokens_BL.shape[1]
    seg = (jnp.arange(length)[None] < lengths_B[:, None]).astype(jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length), tokens_BL.shape) * seg
    logits = nnx.merge(graphdef, state)(tokens_BL, pos, seg)
    lp = jax.nn.log_softmax(
        logits[..., :vocab_size].astype(jnp.float32) / temperature, axis=-1
    )
    vals, ids = jax.lax.top_k(lp, k)
    return ids.astype(jnp.int32), vals

  def run(tokens_BL, lengths_B):
    ids, vals = score(state, jnp.asarray(tokens_BL), jnp.asarray(lengths_B))
    return np.asarray(ids), np.asarray(vals)

  return run


def score_sequences(
    scorer: Callable, seqs: list[np.ndarray], batch_size: int, width: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(ids [n, K], logprobs [n, K])`` per sequence, in order.

  Sequences are right-padded to ``width`` in batches of ``batch_size``
  (the last batch padded with empty rows), so the scorer compiles once.
  """
  for start in range(0, len(seqs), batch_size):
    chunk = seqs[start : start + batch_size]
    tokens = np.zeros((batch_size, width), np.int32)
    lengths = np.zeros(batch_size, np.int32)
    for r, ids in enumerate(chunk):
      if len(ids) > width:
        raise ValueError(
            f"sequence {start + r} has {len(ids)} tokens, more than the"
            f" scoring width {width}; raise data.max_len."
        )
      tokens[r, : len(ids)], lengths[r] = ids, len(ids)
    ids_BLK, lp_BLK = scorer(tokens, lengths)
    for r, ids in enumerate(chunk):
      yield ids_BLK[r, : len(ids)], lp_BLK[r, : len(ids)]


def cache_header(c: Any, tok: Any) -> topk_cache.TopKHeader:
  return topk_cache.TopKHeader(
      k=int(c.k),
      temperature=float(c.temperature),
      vocab_size=tok.vocab_size,
      tokenizer_fingerprint=tok.fingerprint(),
  )


def run_topk_cache(config: Any, workdir: str) -> dict[str, float]:
  """Teacher top-k log-probs (at ``cache.temperature``) over SFT examples.

  Each example is scored as the trainer will see it (prompt || completion
  cut to ``data.max_len``), so ``inputs.TopKBatches`` can check the cache
  against the data token by token. Writes ``workdir/topk.array_record``.
  """
  c = config.cache
  tok = inputs.load_tokenizer(config.data.tokenizer, workdir)
  pairing.check_tokenizers(config, tok, ("teacher",), workdir)
  teacher = trainer.build_model(config.teacher, tok)
  # The scorer slices padded widths to the tokenizer; a narrower teacher is
  # refused here.
  pairing.shared_vocab(config, tok, {"teacher": teacher.cfg.vocab_size})
  examples = inputs.sft_examples(config.data, tok)
  max_len = int(config.data.max_len)
  header = cache_header(c, tok)
  scorer = make_topk_scorer(
      teacher, header.k, header.temperature, tok.vocab_size
  )
  seqs = [inputs.example_ids(ex, max_len) for ex in examples]
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "topk.array_record")
  scored = score_sequences(
      scorer, seqs, int(c.get("batch_size", 8)), max(map(len, seqs))
  )
  with topk_cache.TopKCacheWriter(path, header) as writer:
    for ex, ids, (top_ids, top_lp) in zip(
        examples, seqs, tqdm.tqdm(scored, total=len(seqs), desc="topk cache")
    ):
      writer.write(
          ids,
          top_ids,
          top_lp,
          prompt_length=min(len(ex["prompt_ids"]), len(ids)),
          temperature=header.temperature,
      )
  print(f"wrote {len(examples)} examples to {path}")
  return {"examples": float(len(examples))}
