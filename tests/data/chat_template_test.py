"""Tests for w2s_jax.data.chat_template against transformers' renderer."""

import pytest
from transformers.utils import chat_template_utils

from w2s_jax.data import chat_template


def test_render_chat_template_matches_transformers():
  template = (
      '{%- set ns = namespace(n=0) %}'
      '{%- for m in messages %}{%- if m.role == "skip" %}{% continue %}'
      '{%- endif %}{%- set ns.n = ns.n + 1 %}\n'
      '  {% generation %}{{ m.role }}={{ m.content }}{% endgeneration %}\n'
      '{%- endfor %}\n'
      '{{ ns.n }} {{ tools | tojson }} {{ tools | tojson(indent=2) }}'
      ' {{ dict(a=1) | tojson }} {{ eos_token }}{{ documents }}'
      '{% if add_generation_prompt %}GEN{% endif %}'
  )
  conv = [
      {'role': 'user', 'content': 'é <b>'},
      {'role': 'skip', 'content': 'x'},
      {'role': 'assistant', 'content': '数'},
  ]
  tools = [{'z': 'é<&>', 'a': [1, 2]}]
  for gen in (True, False):
    want, _ = chat_template_utils.render_jinja_template(
        conversations=[conv], tools=tools, chat_template=template,
        add_generation_prompt=gen, eos_token='</s>',
    )  # fmt: skip
    got = chat_template.render_chat_template(
        template, conv, add_generation_prompt=gen,
        variables={'tools': tools, 'eos_token': '</s>'},
    )  # fmt: skip
    assert got == want[0]
  with pytest.raises(
      ValueError, match=r"template 'mine' failed.*UndefinedError"
  ):
    chat_template.render_chat_template(
        '{{ messages[0].x.y }}', conv, add_generation_prompt=False,
        origin="'mine'",
    )  # fmt: skip
