"""Tokenizer agreement of paired models: one check for every job.

Every job that pairs models (distill and the other offline teacher methods,
RL with a teacher, sample / RSD, the top-k cache) calls ``check_tokenizers``
before it builds a model (a mismatch fails in seconds) and ``shared_vocab``
on the built models:

* a role's own tokenizer (``teacher.tokenizer``, ``student.tokenizer``),
  when set, must equal ``data.tokenizer`` token for token; a mismatch is
  refused naming both keys and both tokenizer paths;
* embedding widths may differ by padding (Qwen's 151,936 vs 152,064): every
  model then covers the tokenizer's ids and the logits are sliced to the
  tokenizer size, which ``shared_vocab`` returns; a model narrower than the
  tokenizer is refused naming both widths, the config keys that built the
  models and the tokenizer path.
"""

from __future__ import annotations

from typing import Any

from w2s_jax.data import tokenizers as tokenizers_lib
from w2s_jax.training import inputs


def _spec(config: Any, key: str) -> str:
  node = config
  for part in key.split("."):
    node = node.get(part) if hasattr(node, "get") else None
  return str(node or "")


def check_tokenizers(
    config: Any, tokenizer: Any, roles: tuple[str, ...], workdir: str
) -> None:
  """``<role>.tokenizer`` (where set) must match ``data.tokenizer``.

  Raises:
    ValueError: naming both keys, both paths and the first difference.
  """
  for role in roles:
    spec = _spec(config, f"{role}.tokenizer")
    if not spec:
      continue
    other = inputs.load_tokenizer(spec, workdir)
    try:
      tokenizers_lib.check_compatible(
          tokenizer, other, what=f"data/{role}", check_special_ids=False
      )
    except ValueError as e:
      raise ValueError(
          f"{role}.tokenizer={spec} ({other.vocab_size} tokens) does not"
          f" match data.tokenizer={_spec(config, 'data.tokenizer')}"
          f" ({tokenizer.source}, {tokenizer.vocab_size} tokens): {e}"
      ) from None


def _built_from(config: Any, role: str) -> str:
  hf = _spec(config, f"{role}.hf_path")
  if hf:
    return f"{role}.hf_path={hf}"
  width = _spec(config, f"{role}.overrides.vocab_size")
  if width and width != "0":
    return f"{role}.overrides.vocab_size={width}"
  return f"{role}.preset={_spec(config, f'{role}.preset')}"


def shared_vocab(
    config: Any, tokenizer: Any, widths: dict[str, int]
) -> int | None:
  """The vocabulary the models' logits are sliced to.

  None when every width equals the tokenizer size (nothing to slice) and
  ``loss.vocab_size`` is unset; ``loss.vocab_size`` when set.

  Args:
    config: the job config (its keys name the models in messages).
    tokenizer: the ``data.tokenizer`` every model must cover.
    widths: role -> embedding width (``model.cfg.vocab_size``).

  Raises:
    ValueError: a model narrower than the tokenizer, or ``loss.vocab_size``
      wider than a model.
  """
  size = int(tokenizer.vocab_size)
  narrow = {r: w for r, w in widths.items() if w < size}
  if narrow:
    shown = ", ".join(
        f"{r} has {w} ({_built_from(config, r)})" for r, w in widths.items()
    )
    raise ValueError(
        f"the models do not cover the tokenizer: {shown} embedding rows, but"
        f" data.tokenizer={_spec(config, 'data.tokenizer')}"
        f" ({tokenizer.source}) has {size} tokens. Pair models trained with"
        " that tokenizer (widths padded beyond it are sliced automatically)."
    )
  fixed = int(_spec(config, "loss.vocab_size") or 0)
  if fixed:
    if fixed > min(widths.values()):
      raise ValueError(
          f"loss.vocab_size={fixed} exceeds an embedding width"
          f" ({widths}); set it to at most {min(widths.values())} (0 = the"
          f" tokenizer's {size})."
      )
    return fixed
  return size if any(w != size for w in widths.values()) else None
