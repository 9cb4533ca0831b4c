"""The chat-template renderer: jinja chat templates rendered as transformers.

`render_chat_template` renders the way transformers 5 does: a sandboxed
immutable jinja2 environment with `trim_blocks` and `lstrip_blocks`, loop
controls, a pass-through `{% generation %}` block, globals `raise_exception`,
`strftime_now`, `dict`, `namespace`, and a `tojson` filter that escapes
neither HTML nor non-ASCII characters. Inputs are deep-copied into JSON types
first, so templates never touch foreign objects.

`Tokenizer.apply_chat_template` and the prompt formats of `formatting` (which
re-exports `render_chat_template`) render through this module.
"""

from __future__ import annotations

import collections.abc
import datetime
import functools
import json
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
import numpy as np

_REASONING_KEYS = ('reasoning_content', 'thinking', 'reasoning')


def _raise_exception(message: str) -> None:
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None,
            sort_keys=False) -> str:  # fmt: skip
  # jinja's own filter escapes HTML characters and sorts keys; templates are
  # written against transformers' plain json.dumps.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                    separators=separators, sort_keys=sort_keys)  # fmt: skip


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


class _DictFactory:
  """`dict(...)` for templates, without handing them the `dict` type."""

  def __call__(self, *args, **kwargs) -> dict:
    return dict(*args, **kwargs)

  def fromkeys(self, *args) -> dict:
    return dict.fromkeys(*args)


class _Namespace(jinja2.utils.Namespace):
  """jinja's namespace, refusing underscore names (sandbox escapes)."""

  def __init__(*args, **kwargs):  # jinja's trick: `self` may be a kwarg name
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for key in attrs:
      _Namespace._check(key)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, key, value):
    _Namespace._check(key)
    jinja2.utils.Namespace.__setitem__(self, key, value)

  @staticmethod
  def _check(key):
    if isinstance(key, str) and key.startswith('_'):
      raise jinja2.exceptions.SecurityError(
          f'chat templates may not set underscore attribute {key!r}'
      )


class _GenerationBlock(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}` renders its body unchanged."""

  tags = {'generation'}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
    call = self.call_method('_render')
    return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

  def _render(self, caller):
    return caller()


@functools.cache
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True,
      lstrip_blocks=True,
      extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
  )
  env.filters['tojson'] = _tojson
  env.globals.update(
      raise_exception=_raise_exception,
      strftime_now=_strftime_now,
      dict=_DictFactory(),
      namespace=_Namespace,
  )
  return env


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
  return _environment().from_string(template)


def _plain(value: Any) -> Any:
  """A deep copy in JSON types, so templates never touch foreign objects."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, np.generic):
    return value.item()
  for kind in (str, int, float):  # subclasses, e.g. enums
    if isinstance(value, kind):
      return kind(value)
  if isinstance(value, collections.abc.Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  raise ValueError(
      'chat template inputs must be JSON-like (str, numbers, lists, dicts),'
      f' got {type(value).__name__}; convert it first.'
  )


def _messages(messages: Any) -> list[dict[str, Any]]:
  if isinstance(messages, (str, Mapping)) or not messages:
    raise ValueError(
        'messages must be a non-empty list of {"role": ..., "content": ...}'
        f' dicts, got {messages!r:.80}.'
    )
  out = []
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping) or not isinstance(
        message.get('role'), str
    ):
      raise ValueError(
          f'message {i} must be a dict with a string "role", got'
          f' {message!r:.80}.'
      )
    message = {k: _plain(v) for k, v in message.items() if v is not None}
    reasoning = [message[k] for k in _REASONING_KEYS if k in message]
    if reasoning:  # templates read one name or another; fill both
      message = {'thinking': reasoning[0], **message}
      message['reasoning_content'] = reasoning[0]
    out.append(message)
  return out


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool,
    variables: Mapping[str, Any] | None = None,
    origin: str = 'the template',
) -> str:
  """Renders a jinja chat template as transformers does.

  Args:
    template: the jinja source.
    messages: the conversation; None-valued keys are dropped and reasoning
      fields aliased, as in transformers.
    add_generation_prompt: end with the header of an assistant turn.
    variables: template variables (special tokens, `tools`, ...); `tools` and
      `documents` default to None.
    origin: where the template came from, for the error message.

  Returns:
    The rendered text.

  Raises:
    ValueError: the template does not compile or fails while rendering
      (including its own `raise_exception`); the message names `origin`.
  """
  context = {
      'tools': None,
      'documents': None,
      **_plain(dict(variables or {})),
      'messages': _messages(messages),
      'add_generation_prompt': add_generation_prompt,
  }
  try:
    return _compile(template).render(**context)
  except Exception as e:  # template code can fail in any way; say where
    raise ValueError(
        f'chat template {origin} failed to render: {type(e).__name__}: {e}'
    ) from e
