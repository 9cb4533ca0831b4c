"""Tokenizers from Hugging Face `tokenizer.json` or sentencepiece files.

`load_tokenizer(path)` reads a Hugging Face tokenizer directory without
transformers or torch:

* `tokenizer.json` through `tokenizers`, or a sentencepiece `tokenizer.model`
  (or a single `*.model`) through `sentencepiece`;
* `tokenizer_config.json`: `bos_token`, `eos_token`, `pad_token`, `unk_token`
  and any other `*_token` (all are chat-template variables), a consistency
  check of `added_tokens_decoder`, `chat_template`,
  `clean_up_tokenization_spaces`, and `add_bos_token` / `add_eos_token` for
  sentencepiece (a tokenizer.json post-processor decides by itself, as in
  transformers 5); `special_tokens_map.json` fills missing tokens;
* `chat_template.jinja` and `additional_chat_templates/*.jinja`, which take
  precedence over the config's template (transformers 5);
* `generation_config.json`: `eos_token_id` (int or list) joins `eos_ids`.


The `Tokenizer` class and its conventions (pad and eos ids, vocabulary size,
sentencepiece behaviour) live in `tokenizer_core`, the two backends in
`tokenizer_backends`; the public names of both are re-exported here.
`same_vocabulary` and `check_compatible` compare two tokenizers.

Shapes: L length.
"""

from __future__ import annotations

import collections.abc
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import sentencepiece
import tokenizers

from w2s_jax.data.tokenizer_core import (
    _NAMED,
    CHAT_TEMPLATE_DIR,
    CHAT_TEMPLATE_FILE,
    GENERATION_CONFIG,
    SENTENCEPIECE_MODEL,
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    Tokenizer,
)

__all__ = [
    # Re-exported from tokenizer_core.
    'CHAT_TEMPLATE_DIR',
    'CHAT_TEMPLATE_FILE',
    'GENERATION_CONFIG',
    'SENTENCEPIECE_MODEL',
    'SPECIAL_TOKENS_MAP',
    'TOKENIZER_CONFIG',
    'TOKENIZER_JSON',
    'Tokenizer',
    # Defined here.
    'check_compatible',
    'load_tokenizer',
    'same_vocabulary',
]


def _first_difference(a: Tokenizer, b: Tokenizer, names: Sequence[str]):
  if a.vocab_size != b.vocab_size:
    return (
        f'vocab_size {a.vocab_size} ({names[0]}) vs {b.vocab_size} ({names[1]})'
    )
  if a.id_table != b.id_table:
    i, (x, y) = next(
        (i, p)
        for i, p in enumerate(zip(a.id_table, b.id_table))
        if p[0] != p[1]
    )
    return f'id {i} is {x!r} in {names[0]} but {y!r} in {names[1]}'
  return None


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
  """Whether both map every id to the same token (added tokens included)."""
  return _first_difference(a, b, ('a', 'b')) is None


def check_compatible(
    a: Tokenizer,
    b: Tokenizer,
    what: str = 'teacher/student',
    check_special_ids: bool = False,
) -> None:
  """Raises ValueError naming the first difference between two vocabularies.

  Args:
    a: first tokenizer.
    b: second tokenizer.
    what: 'a_name/b_name', used in the message.
    check_special_ids: also require equal bos/eos/pad ids (off by default:
      base and instruct tokenizers differ there yet share the id space).
  """
  names = what.split('/') if what.count('/') == 1 else ('a', 'b')
  diff = _first_difference(a, b, names)
  for attr in ('bos_id', 'eos_id', 'pad_id') if check_special_ids else ():
    if diff is None and getattr(a, attr) != getattr(b, attr):
      x, y = getattr(a, attr), getattr(b, attr)
      diff = f'{attr} {x} ({names[0]}) vs {y} ({names[1]})'
  if diff is not None:
    raise ValueError(
        f'{what} tokenizers are not compatible: {diff}. Token ids are only'
        ' comparable under one tokenizer; load both from the same files'
        f' ({a.source} vs {b.source}).'
    )


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(
        f'{path} is not valid JSON (line {e.lineno}, column {e.colno}:'
        f' {e.msg}); repair or re-save the file.'
    ) from e
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text ({e}); re-save it.') from e


def _token_text(value: Any) -> str | None:
  if isinstance(value, collections.abc.Mapping):  # a serialized AddedToken
    value = value.get('content')
  return value if isinstance(value, str) else None


def _backend_file(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    raise FileNotFoundError(
        f'tokenizer path {path} does not exist; pass a directory holding'
        f' {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}, or one of those files.'
    )
  if path.is_file():
    return path
  for name in (TOKENIZER_JSON, SENTENCEPIECE_MODEL):
    if (path / name).is_file():
      return path / name
  models = sorted(path.glob('*.model'))
  if len(models) == 1:
    return models[0]
  hint = ''
  if (path / 'vocab.json').is_file():
    hint = (
        ' It has vocab.json/merges.txt only: re-save it with transformers'
        ' (save_pretrained) to write tokenizer.json.'
    )
  raise FileNotFoundError(
      f'no tokenizer file in {path}: looked for {TOKENIZER_JSON},'
      f' {SENTENCEPIECE_MODEL} and a single *.model (found'
      f' {len(models)}).{hint}'
  )


def _chat_templates(
    folder: pathlib.Path, config: Mapping[str, Any], config_path: pathlib.Path
) -> dict[str, tuple[str, str]]:
  files = [folder / CHAT_TEMPLATE_FILE] if (
      folder / CHAT_TEMPLATE_FILE
  ).is_file() else []  # fmt: skip
  files += sorted((folder / CHAT_TEMPLATE_DIR).glob('*.jinja'))
  if files:  # template files take precedence over the config (transformers 5)
    return {
        ('default' if f.name == CHAT_TEMPLATE_FILE else f.stem): (
            f.read_text(encoding='utf-8'),
            str(f),
        )
        for f in files
    }
  value, where = config.get('chat_template'), f'{config_path}:chat_template'
  if value is None or isinstance(value, str):
    return {} if value is None else {'default': (value, where)}
  # The older list form: [{'name': ..., 'template': ...}, ...].
  if not isinstance(value, list) or not all(
      isinstance(t, Mapping) and {'name', 'template'} <= set(t) for t in value
  ):
    raise ValueError(
        f'{where} must be a string or a list of {{"name", "template"}} dicts.'
    )
  return {t['name']: (t['template'], f'{where}[{t["name"]!r}]') for t in value}


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
  """Loads a tokenizer directory (HF layout) or a single tokenizer file.

  Args:
    path: a directory with `tokenizer.json` or `tokenizer.model` and the
      optional side files listed in the module docstring, or one such file
      (its side files are then read from its directory).

  Returns:
    The `Tokenizer`.

  Raises:
    FileNotFoundError: the path, or any tokenizer file in it, is missing.
    ValueError: a malformed file, or inconsistent special tokens.
  """
  file = _backend_file(pathlib.Path(path))
  folder = file.parent
  config_path = folder / TOKENIZER_CONFIG
  config = _read_json(config_path) if config_path.is_file() else {}
  legacy = folder / SPECIAL_TOKENS_MAP
  legacy = _read_json(legacy) if legacy.is_file() else {}
  if not isinstance(config, dict) or not isinstance(legacy, dict):
    raise ValueError(
        f'{config_path} and {SPECIAL_TOKENS_MAP} hold JSON objects.'
    )
  special = {}
  extra = config.get('extra_special_tokens')  # transformers 5: {name: token}
  extra = extra if isinstance(extra, dict) else {}
  for key, value in {**legacy, **config, **extra}.items():
    if key.endswith('_token') and (text := _token_text(value)) is not None:
      special[key] = text
  declared = {
      int(i): _token_text(t)
      for i, t in config.get('added_tokens_decoder', {}).items()
  }
  options = {}
  if file.suffix == '.json':
    _read_json(file)  # a syntax error then names file, line and column
    try:
      backend = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a bare Exception
      raise ValueError(
          f'{file} is not a tokenizer.json the tokenizers library can read:'
          f' {e}. Re-save it with a recent tokenizers/transformers.'
      ) from e
    token_of = backend.id_to_token
  else:
    try:
      backend = sentencepiece.SentencePieceProcessor(model_file=str(file))
    except Exception as e:  # sentencepiece raises RuntimeError or OSError
      raise ValueError(
          f'{file} is not a sentencepiece model ({e}); pass a tokenizer.json'
          ' or a .model written by sentencepiece.'
      ) from e
    size = backend.get_piece_size()
    token_of = lambda i: backend.id_to_piece(i) if 0 <= i < size else None
    for key, tid in zip(_NAMED, (backend.bos_id(), backend.eos_id(),
                                 backend.pad_id(), backend.unk_id())):  # fmt: skip
      if key not in special and tid >= 0:
        special[key] = backend.id_to_piece(tid)
    options = {
        'add_bos_token': config.get('add_bos_token'),
        'add_eos_token': config.get('add_eos_token'),
    }
  for tid, text in declared.items():
    if text is not None and (found := token_of(tid)) != text:
      raise ValueError(
          f'{config_path}: added token {tid} is {text!r} but {file} has'
          f' {found!r} there; the files come from different tokenizers (or'
          ' sentencepiece needs it as a user_defined_symbol at training).'
      )
  eos_ids = []
  gen_path = folder / GENERATION_CONFIG
  if gen_path.is_file():
    value = _read_json(gen_path).get('eos_token_id')
    eos_ids = [value] if isinstance(value, int) else (value or [])
    if not isinstance(eos_ids, list) or not all(
        isinstance(i, int) for i in eos_ids
    ):
      raise ValueError(
          f'{gen_path}: eos_token_id must be an int or a list of ints, got'
          f' {value!r}.'
      )
  return Tokenizer.create(
      backend,
      special_tokens=special,
      chat_templates=_chat_templates(folder, config, config_path),
      extra_eos_ids=eos_ids,
      clean_up_tokenization_spaces=bool(
          config.get('clean_up_tokenization_spaces', False)
      ),
      source=str(file),
      **options,
  )
