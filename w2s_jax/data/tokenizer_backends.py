"""The two tokenizer backends behind `tokenizer_core.Tokenizer`.

`_HFBackend` wraps a `tokenizers.Tokenizer` (a Hugging Face tokenizer.json),
`_SPBackend` a `sentencepiece.SentencePieceProcessor`. Both expose the same
small surface: `vocab` (token -> id, added tokens included), `special_ids`
(what `skip_special_tokens` drops), `added_ids`, `encode` and `decode`; the
HF backend also has `encode_special` (its post-processor adds BOS/EOS).

Shapes: L length.
"""

from __future__ import annotations

import sentencepiece
import tokenizers
from sentencepiece import sentencepiece_model_pb2

# transformers' `clean_up_tokenization_spaces` edits (skipped for BPE models).
_CLEANUPS = (
    (' .', '.'), (' ?', '?'), (' !', '!'), (' ,', ','), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
    (" 're", "'re"),
)  # fmt: skip


class _HFBackend:
  """A `tokenizers.Tokenizer`; added tokens marked special are special."""

  def __init__(self, tok: tokenizers.Tokenizer, clean_up_spaces: bool):
    tok.no_truncation()  # a tokenizer.json may carry a silent max_length
    tok.no_padding()
    self.tok = tok
    self.clean_up = clean_up_spaces and type(tok.model).__name__ != 'BPE'
    self.vocab = tok.get_vocab(with_added_tokens=True)
    added = tok.get_added_tokens_decoder()
    self.special_ids = frozenset(i for i, t in added.items() if t.special)
    self.added_ids = frozenset(added)

  def encode(self, texts: list[str]) -> list[list[int]]:
    encs = self.tok.encode_batch(texts, add_special_tokens=False)
    return [e.ids for e in encs]

  def encode_special(self, texts: list[str]) -> list[list[int]]:
    encs = self.tok.encode_batch(texts, add_special_tokens=True)
    return [e.ids for e in encs]

  def decode(self, ids: list[int], skip_special: bool) -> str:
    text = self.tok.decode(ids, skip_special_tokens=skip_special)
    if self.clean_up:
      for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


class _SPBackend:
  """A `SentencePieceProcessor`; control and unknown ids are special."""

  def __init__(self, sp: sentencepiece.SentencePieceProcessor):
    self.sp = sp
    n = sp.get_piece_size()
    self.vocab = {sp.id_to_piece(i): i for i in range(n)}
    self.special_ids = frozenset(
        i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    user_defined = proto.SentencePiece.USER_DEFINED
    user = {i for i, p in enumerate(proto.pieces) if p.type == user_defined}
    self.added_ids = self.special_ids | user

  def encode(self, texts: list[str]) -> list[list[int]]:
    return self.sp.encode(texts, out_type=int)

  def decode(self, ids: list[int], skip_special: bool) -> str:
    if skip_special:
      return self.sp.decode([i for i in ids if i not in self.special_ids])
    # Special pieces are written verbatim, as transformers does. sp strips the
    # dummy-prefix space of a run's first piece; after a special piece that
    # space is real text, so it is put back.
    parts, run = [], []
    for i in [*ids, None]:
      if i is not None and i not in self.special_ids:
        run.append(i)
        continue
      if run:
        lead = (
            ' ' if parts and self.sp.id_to_piece(run[0])[0] == '\u2581' else ''
        )
        parts.append(lead + self.sp.decode(run))
        run = []
      if i is not None:
        parts.append(self.sp.id_to_piece(i))
    return ''.join(parts)
