"""The `Tokenizer`: ids, special tokens and chat templates.

A read-only, picklable wrapper of a Hugging Face `tokenizers.Tokenizer` or a
sentencepiece model (`tokenizer_backends`), made by `Tokenizer.create` or by
`tokenizers.load_tokenizer`, which re-exports everything public here.

Conventions. `pad_id` falls back to `eos_id` when there is no pad token
(Llama-3): padded positions are masked, the id only has to be valid. `eos_ids`
holds every id that ends a generation: `eos_id`, generation_config's ids and
the chat template's end-of-turn token (Qwen chat models stop at `<|im_end|>`
and `<|endoftext|>`). `vocab_size` is the largest id + 1, added tokens
included. Padding and truncation stored in a tokenizer.json are switched off.

Sentencepiece models behave exactly as `SentencePieceProcessor`: control
symbols (`<s>`, `</s>`) written as text are encoded as ordinary pieces, so a
chat template for such a model marks turns with user-defined symbols.
transformers 5 re-implements sentencepiece and differs on leading whitespace.

Shapes: L length.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np
import sentencepiece
import tokenizers

from w2s_jax.data.chat_template import render_chat_template
from w2s_jax.data.tokenizer_backends import _HFBackend, _SPBackend

TOKENIZER_JSON = 'tokenizer.json'
SENTENCEPIECE_MODEL = 'tokenizer.model'
TOKENIZER_CONFIG = 'tokenizer_config.json'
SPECIAL_TOKENS_MAP = 'special_tokens_map.json'
CHAT_TEMPLATE_FILE = 'chat_template.jinja'
CHAT_TEMPLATE_DIR = 'additional_chat_templates'
GENERATION_CONFIG = 'generation_config.json'
_NAMED = ('bos_token', 'eos_token', 'pad_token', 'unk_token')


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Tokenizer:
  """A tokenizer: ids, special tokens and chat templates.

  Made by `load_tokenizer` or `Tokenizer.create`. Read-only and picklable
  (grain workers receive it).

  Attributes:
    backend: the wrapped `tokenizers` or sentencepiece object.
    vocab_size: largest id + 1, added tokens included.
    bos_id: BOS id or None.
    eos_id: EOS id or None.
    pad_id: pad id; `eos_id` when there is no pad token.
    unk_id: unknown-token id or None.
    special_ids: the ids `skip_special_tokens` drops.
    special_tokens: named special tokens ({'eos_token': '<|im_end|>', ...}).
    chat_templates: name -> (jinja source, where it came from).
    extra_eos_ids: more ids that end a generation (generation_config.json).
    add_bos: sentencepiece: `add_special_tokens=True` prepends BOS.
    add_eos: sentencepiece: `add_special_tokens=True` appends EOS.
    source: the file it was read from.
  """

  backend: _HFBackend | _SPBackend
  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  unk_id: int | None
  special_ids: frozenset[int]
  special_tokens: dict[str, str]
  chat_templates: dict[str, tuple[str, str]]
  extra_eos_ids: tuple[int, ...]
  add_bos: bool
  add_eos: bool
  source: str

  @classmethod
  def create(
      cls,
      backend: tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor,
      *,
      special_tokens: Mapping[str, str] | None = None,
      chat_templates: Mapping[str, tuple[str, str]] | None = None,
      extra_eos_ids: Sequence[int] = (),
      add_bos_token: bool | None = None,
      add_eos_token: bool | None = None,
      clean_up_tokenization_spaces: bool = False,
      source: str = '<memory>',
  ) -> Tokenizer:
    """Wraps a `tokenizers.Tokenizer` or a `SentencePieceProcessor`.

    Args:
      backend: the tokenizer object.
      special_tokens: named special tokens; bos/eos/pad/unk must be in the
        vocabulary, other `*_token` entries are template variables only.
      chat_templates: name -> (jinja source, origin); 'default' is the one
        used unless another is asked for.
      extra_eos_ids: more ids that end a generation.
      add_bos_token: sentencepiece only (default: if the model has a BOS).
      add_eos_token: sentencepiece only (default: False).
      clean_up_tokenization_spaces: transformers' decode clean-up (skipped for
        BPE models, as in transformers 5).
      source: where the tokenizer came from, for messages.

    Returns:
      The `Tokenizer`.
    """
    if isinstance(backend, tokenizers.Tokenizer):
      if add_bos_token is not None or add_eos_token is not None:
        raise ValueError(
            f'{source}: add_bos_token/add_eos_token apply to sentencepiece'
            ' models; a tokenizer.json adds BOS/EOS in its post_processor.'
        )
      wrapped = _HFBackend(backend, clean_up_tokenization_spaces)
    elif isinstance(backend, sentencepiece.SentencePieceProcessor):
      wrapped = _SPBackend(backend)
    else:
      raise TypeError(
          'backend must be a tokenizers.Tokenizer or a'
          f' sentencepiece.SentencePieceProcessor, got {type(backend)!r}.'
      )
    size = max(wrapped.vocab.values()) + 1
    special_tokens = dict(special_tokens or {})
    ids = {}
    for key in _NAMED:
      if (token := special_tokens.get(key)) is None:
        continue
      if token not in wrapped.vocab:
        raise ValueError(
            f'{source}: {key}={token!r} is not in the vocabulary; fix {key} in'
            f' {TOKENIZER_CONFIG} or add the token to the tokenizer.'
        )
      ids[key] = wrapped.vocab[token]
    for i in extra_eos_ids:
      if not 0 <= i < size:
        raise ValueError(
            f'{source}: eos id {i} is outside the vocabulary [0, {size});'
            f' fix eos_token_id in {GENERATION_CONFIG}.'
        )
    sp = isinstance(wrapped, _SPBackend)
    bos, eos = ids.get('bos_token'), ids.get('eos_token')
    add_bos = sp and (
        bos is not None if add_bos_token is None else add_bos_token
    )
    add_eos = sp and bool(add_eos_token)
    if (add_bos and bos is None) or (add_eos and eos is None):
      raise ValueError(
          f'{source}: add_bos_token/add_eos_token is set but that token is'
          ' not defined; set bos_token/eos_token too.'
      )
    return cls(
        backend=wrapped,
        vocab_size=size,
        bos_id=bos,
        eos_id=eos,
        pad_id=ids.get('pad_token', eos),
        unk_id=ids.get('unk_token'),
        special_ids=frozenset(wrapped.special_ids | set(ids.values())),
        special_tokens=special_tokens,
        chat_templates=dict(chat_templates or {}),
        extra_eos_ids=tuple(int(i) for i in extra_eos_ids),
        add_bos=add_bos,
        add_eos=add_eos,
        source=source,
    )

  def __repr__(self) -> str:
    kind = 'sentencepiece' if self.is_sentencepiece else 'tokenizers'
    return (
        f'Tokenizer({kind}, {self.source!r}, vocab_size={self.vocab_size},'
        f' eos_ids={self.eos_ids})'
    )

  @property
  def is_sentencepiece(self) -> bool:
    return isinstance(self.backend, _SPBackend)

  @functools.cached_property
  def adds_bos(self) -> bool:
    """Whether `encode(..., add_special_tokens=True)` prepends `bos_id`."""
    ids = self.encode('a', add_special_tokens=True)
    return self.bos_id is not None and ids[:1] == [self.bos_id]

  @functools.cached_property
  def end_of_turn_id(self) -> int | None:
    """`find_end_of_turn_id()` for a one-question conversation, cached."""
    return self.find_end_of_turn_id()

  def find_end_of_turn_id(
      self,
      messages: Sequence[Mapping[str, Any]] | None = None,
      **template_kwargs: Any,
  ) -> int | None:
    """The added token the default template writes right after a reply.

    `<|im_end|>` for ChatML, `<|eot_id|>` for Llama-3.

    Args:
      messages: the turns before the reply (default: one user question).
      **template_kwargs: template variables, as for `apply_chat_template`.

    Returns:
      The id, or None: no default template, it fails to render, or plain
      text follows the reply.
    """
    if 'default' not in self.chat_templates:
      return None
    sentinel = 'w2s sentinel reply'
    conv = list(messages or [{'role': 'user', 'content': 'w2s question'}])
    conv.append({'role': 'assistant', 'content': sentinel})
    try:
      text = self.apply_chat_template(conv, False, **template_kwargs)
    except ValueError:  # e.g. a template that insists on a system turn
      return None
    cut = text.rfind(sentinel) + len(sentinel)
    # Encode whole texts: a fragment would get sentencepiece's dummy prefix
    # and so differ from the ids inside the conversation.
    head, ids = self.encode(text[:cut]), self.encode(text)
    if ids[: len(head)] == head and len(ids) > len(head):
      if ids[len(head)] in self.backend.added_ids | self.special_ids:
        return ids[len(head)]
    return None

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """Ids that end a generation: eos, generation_config's, end-of-turn."""
    ids = (self.eos_id, *self.extra_eos_ids, self.end_of_turn_id)
    return tuple(dict.fromkeys(i for i in ids if i is not None))

  @functools.cached_property
  def id_table(self) -> tuple[str | None, ...]:
    """The token of every id (None for unused ids)."""
    table: list[str | None] = [None] * self.vocab_size
    for token, tid in self.backend.vocab.items():
      table[tid] = token
    return tuple(table)

  def get_vocab(self) -> dict[str, int]:
    """A copy of the token -> id map, added tokens included."""
    return dict(self.backend.vocab)

  def token_to_id(self, token: str) -> int:
    """The id of a vocabulary entry (added tokens included)."""
    if (tid := self.backend.vocab.get(token)) is None:
      raise ValueError(
          f'token {token!r} is not in the vocabulary of {self.source}; use'
          ' encode() for text.'
      )
    return tid

  def id_to_token(self, token_id: int) -> str:
    """The vocabulary entry of an id."""
    token = self.id_table[self._check_ids([token_id])[0]]
    if token is None:
      raise ValueError(f'id {token_id} is unused in {self.source}.')
    return token

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Ids of `text`; special-token text maps to its id (HF backend).

    Args:
      text: the string.
      add_special_tokens: add BOS/EOS as the tokenizer is configured to (its
        post-processor; add_bos/add_eos for sentencepiece). Off by default,
        since chat templates write their own special tokens.

    Returns:
      The ids, `[L]`.
    """
    return self.encode_batch([text], add_special_tokens)[0]

  def encode_batch(
      self, texts: Sequence[str], add_special_tokens: bool = False
  ) -> list[list[int]]:
    """`encode` over a list of strings."""
    if isinstance(texts, str):
      raise ValueError('encode_batch takes a list of strings; use encode().')
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise ValueError(
            f'text {i} is a {type(text).__name__}, not a str; decode it first.'
        )
    if not add_special_tokens:
      return [list(ids) for ids in self.backend.encode(texts)]
    if not self.is_sentencepiece:
      return [list(ids) for ids in self.backend.encode_special(texts)]
    pre = [self.bos_id] if self.add_bos else []
    post = [self.eos_id] if self.add_eos else []
    return [pre + list(ids) + post for ids in self.backend.encode(texts)]

  def decode(
      self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False
  ) -> str:
    """The text of `[L]` ids (a list, numpy or jax array)."""
    return self.backend.decode(self._check_ids(ids), skip_special_tokens)

  def decode_batch(
      self, batch: Sequence[Sequence[int]] | np.ndarray,
      skip_special_tokens: bool = False,
  ) -> list[str]:  # fmt: skip
    """`decode` over the rows of `[B, L]` ids."""
    return [self.decode(ids, skip_special_tokens) for ids in batch]

  def _check_ids(self, ids: Any) -> list[int]:
    arr = np.asarray(ids)
    if arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
      raise ValueError(
          f'decode takes a 1-D sequence of integer ids, got shape {arr.shape}'
          f' and dtype {arr.dtype}; use decode_batch for 2-D input.'
      )
    arr = arr.reshape(-1).astype(np.int64)
    bad = arr[(arr < 0) | (arr >= self.vocab_size)]
    if bad.size:
      raise ValueError(
          f'token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})'
          f' of {self.source}.'
      )
    return arr.tolist()

  def apply_chat_template(
      self,
      messages: Sequence[Mapping[str, Any]],
      add_generation_prompt: bool = True,
      tokenize: bool = False,
      *,
      chat_template: str | None = None,
      **template_kwargs: Any,
  ) -> str | list[int]:
    """Renders a conversation with the chat template, as transformers does.

    Args:
      messages: `[{'role': 'user', 'content': ...}, ...]`; None-valued keys are
        dropped and `reasoning_content` / `thinking` / `reasoning` aliased, as
        in transformers.
      add_generation_prompt: end with the header that opens an assistant turn.
      tokenize: return `encode(text)` (no added special tokens) instead.
      chat_template: a template name or jinja source. Default: 'tool_use'
        when `tools` are passed and it exists, else 'default'.
      **template_kwargs: more template variables (`tools`, `documents`,
        `enable_thinking`, `date_string`, ...); they override special tokens.

    Returns:
      The rendered text, or its ids when `tokenize`.
    """
    templates = self.chat_templates
    name = chat_template
    if name is None:
      name = 'tool_use' if template_kwargs.get('tools') else 'default'
      name = name if name in templates else 'default'
    if name in templates:
      text, origin = templates[name]
    elif chat_template is not None and '{' in chat_template:
      name, text, origin = 'inline', chat_template, 'the chat_template argument'
    elif chat_template is not None or templates:
      raise ValueError(
          f'no chat template {name!r} in {self.source}; it has'
          f' {sorted(templates)}; pass chat_template= one of them.'
      )
    else:
      raise ValueError(
          f'{self.source} has no chat template: add {CHAT_TEMPLATE_FILE}'
          f' (or chat_template in {TOKENIZER_CONFIG}), pass chat_template=,'
          " or use the 'plain' prompt format."
      )
    rendered = render_chat_template(
        text,
        messages,
        add_generation_prompt=add_generation_prompt,
        variables={**self.special_tokens, **template_kwargs},
        origin=f'{name!r} from {origin}',
    )
    if self.is_sentencepiece:  # sentencepiece never maps text to control ids
      control = [
          self.backend.sp.id_to_piece(i) for i in self.backend.special_ids
      ]
      if found := sorted(p for p in control if p in rendered):
        raise ValueError(
            f'chat template {name!r} from {origin} wrote {found[0]!r} as text,'
            ' which sentencepiece encodes as ordinary pieces, not as its'
            ' control id; mark turns with user_defined_symbols instead.'
        )
    return self.encode(rendered) if tokenize else rendered

  @functools.cached_property
  def _fingerprint(self) -> str:
    payload = {
        'vocab': self.id_table,
        'named': [self.bos_id, self.eos_id, self.pad_id, self.unk_id],
        'special': sorted(self.special_ids),
    }
    blob = json.dumps(payload, ensure_ascii=True, separators=(',', ':'))
    return hashlib.sha256(blob.encode('ascii')).hexdigest()

  def fingerprint(self) -> str:
    """sha256 (hex) of the id -> token table and the special ids.

    Stable across processes and machines. Base and instruct tokenizers of a
    family often differ in eos/pad only; `same_vocabulary` ignores those.
    """
    return self._fingerprint
