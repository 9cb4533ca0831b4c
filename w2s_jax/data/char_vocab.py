"""A character-level tokenizer built locally, saved as an HF tokenizer dir.

One token per character (a WordLevel model over single characters) plus
four special tokens with fixed ids::

  0 <pad>   1 <bos>   2 <eos>   3 <unk>   4.. the alphabet, sorted

The directory holds ``tokenizer.json`` (loadable with
``tokenizers.Tokenizer.from_file`` or ``transformers.AutoTokenizer``) and
``tokenizer_config.json`` naming the special tokens, so the rest of the
package treats it like any Hugging Face checkpoint's tokenizer. ``<bos>`` is
prepended by the post-processor (``add_special_tokens=False`` skips it);
``<eos>`` is never added implicitly: the data pipeline appends it where the
loss needs it. Decoding concatenates characters (no spaces inserted).

Nothing is downloaded; the default alphabet is the synthetic task's
(``w2s_jax.data.synthetic.ALPHABET``).
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from w2s_jax.data import synthetic

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def alphabet_of(texts: Iterable[str]) -> str:
  """The sorted set of characters in ``texts``."""
  return "".join(sorted(set().union(*map(set, texts))))


def build_char_tokenizer(
    alphabet: str | None = None, *, add_bos: bool = True
) -> tokenizers.Tokenizer:
  """A tokenizer with one id per character of ``alphabet``.

  Args:
    alphabet: Characters to give ids (deduplicated and sorted, so the ids do
      not depend on the order given). Defaults to the synthetic task's.
    add_bos: Prepend ``<bos>`` when encoding with special tokens.

  Returns:
    A ``tokenizers.Tokenizer``; unknown characters encode to ``<unk>``.
  """
  if alphabet is None:
    alphabet = synthetic.ALPHABET
  chars = sorted(set(alphabet))
  if not chars:
    raise ValueError("alphabet is empty; pass the characters to encode.")
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  vocab.update({c: i for i, c in enumerate(chars, start=len(SPECIAL_TOKENS))})
  tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
  # Oniguruma's (?m) is "dot matches newline": every character is a word.
  tok.pre_tokenizer = pre_tokenizers.Split(
      tokenizers.Regex(r"(?m)."), behavior="isolated"
  )
  tok.decoder = decoders.Fuse()
  if add_bos:
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, BOS_ID)],
    )
  # Registered as special so that "<eos>" in text is one token, not 5 chars.
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  return tok


def _atomic_write(path: pathlib.Path, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def save_char_tokenizer(
    out_dir: str | os.PathLike[str],
    alphabet: str | None = None,
    *,
    add_bos: bool = True,
    model_max_length: int = 4096,
) -> pathlib.Path:
  """Builds the tokenizer and writes it as an HF tokenizer directory.

  Args:
    out_dir: Directory to create (or overwrite the two files in).
    alphabet: As in ``build_char_tokenizer``.
    add_bos: As in ``build_char_tokenizer``.
    model_max_length: Recorded in ``tokenizer_config.json``.

  Returns:
    ``out_dir`` as a path.
  """
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(
        f"out_dir={os.fspath(out)!r} is a file; pass a directory path."
    )
  out.mkdir(parents=True, exist_ok=True)
  tok = build_char_tokenizer(alphabet, add_bos=add_bos)
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": BOS,
      "eos_token": EOS,
      "pad_token": PAD,
      "unk_token": UNK,
      "add_bos_token": add_bos,
      "add_eos_token": False,
      "model_max_length": model_max_length,
      "clean_up_tokenization_spaces": False,
  }
  _atomic_write(out / "tokenizer.json", tok.to_str(pretty=True))
  _atomic_write(out / "tokenizer_config.json", json.dumps(config, indent=2))
  return out


def load_char_tokenizer(path: str | os.PathLike[str]) -> tokenizers.Tokenizer:
  """Loads a directory written by ``save_char_tokenizer``."""
  file = pathlib.Path(path) / "tokenizer.json"
  if not file.is_file():
    raise FileNotFoundError(
        f"No tokenizer.json in {os.fspath(path)!r}; write one with"
        " save_char_tokenizer(path)."
    )
  return tokenizers.Tokenizer.from_file(os.fspath(file))
