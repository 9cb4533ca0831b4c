"""Tests for w2s_jax.data.tokenizers against transformers and sentencepiece.

Every tokenizer is trained here on a small corpus (nothing is downloaded):
a Qwen2-like byte-level BPE with a ChatML template, a Llama-3-like BPE with
its header/eot template, and a Llama-2-like sentencepiece model.
"""

import datetime
import json
import os
import pathlib
import pickle
import random
import shutil
import subprocess
import sys
import unicodedata

import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
import tokenizers
import transformers
from tokenizers import (
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from w2s_jax.data import tokenizer_core
from w2s_jax.data import tokenizers as toks

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r' ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+'
)
LLAMA3_SPLIT = QWEN_SPLIT.replace(r'\p{N}|', r'\p{N}{1,3}|')

CHATML_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}
{%- else %}{{- 'You are a careful math assistant.' }}{%- endif %}
{{- '\\n\\n# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>system\\nYou are a careful math assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}{% continue %}{% endif %}
{%- if message.role not in ['user', 'assistant', 'system'] %}
{{- raise_exception('Unsupported role ' + message.role) }}
{%- endif %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

LLAMA3_TEMPLATE = """\
{{- bos_token }}
{%- if date_string is not defined %}
{%- set date_string = strftime_now('%d %b %Y') %}
{%- endif %}
{%- set ns = namespace(system='') %}
{%- if messages[0]['role'] == 'system' %}
{%- set ns.system = messages[0]['content'] | trim %}
{%- set messages = messages[1:] %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'Today Date: ' + date_string + '\\n\\n' + ns.system + '<|eot_id|>' }}
{%- for message in messages %}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('Conversation roles must alternate user/assistant') }}
{%- endif %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
{{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Unicode (accents, CJK, emoji, ZWJ), digits, LaTeX, whitespace runs.
STRINGS = [
    'Natalia sold 48 clips in April and half as many in May.',
    '12345 + 678 = 13023, and 0.5 = 1/2',
    '\\frac{1}{2} + \\dfrac{3}{4} = \\boxed{\\frac{5}{4}}',
    'café naïve résumé Ångström',
    '数学题：小明有3个苹果。',
    'emoji 😀🧮👍🏽 and ZWJ 👨\u200d👩\u200d👧',
    '  leading spaces and trailing   ',
    'tabs\tand\t\tnewlines\n\n\nend',
    '\r\nwindows line\r\n',
    'x  =  y   +   z',
    'e\u0301 decomposed accent',
    "It's I'M we'LL",
    '',
    ' ',
]
SPECIAL_STRINGS = ['<|im_start|>user\nhi 5<|im_end|>\n', 'a<|endoftext|>b']


def _corpus(seed=0):
  rng = random.Random(seed)
  names = ['Natalia', 'Weng', 'Betty', 'James', 'Ken', 'Alexis', 'José']
  lines = []
  for _ in range(300):
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    name = rng.choice(names)
    lines.append(
        f'Question: {name} has {a} apples and buys {b} more. How many?\n'
        f'Answer:\n{name} has {a} + {b} = {a + b} apples.\n\n#### {a + b}'
    )
    lines.append(f'\\frac{{{a}}}{{{b}}} = \\boxed{{{a / b:.2f}}}\n\n')
  lines += ['café naïve résumé 数学 题 苹果 😀 🧮', 'It is\tdone.\n\n\n'] * 20
  return lines


def _bpe(split, specials, post=None):
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(split), behavior='isolated'),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = post or processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=700,
      special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(_corpus(), trainer)
  return tok


def _save_hf(tok, folder, template, generation_eos=None, **special):
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special)
  hf.chat_template = template
  hf.save_pretrained(folder)
  if generation_eos is not None:
    gen = {'eos_token_id': generation_eos}
    (folder / 'generation_config.json').write_text(json.dumps(gen))
  return folder


@pytest.fixture(scope='module')
def qwen_dir(tmp_path_factory):
  tok = _bpe(QWEN_SPLIT, ['<|endoftext|>', '<|im_start|>', '<|im_end|>'])
  folder = tmp_path_factory.mktemp('qwen')
  return _save_hf(
      tok, folder, CHATML_TEMPLATE, generation_eos=[2, 0],
      eos_token='<|im_end|>', pad_token='<|endoftext|>',
  )  # fmt: skip


@pytest.fixture(scope='module')
def qwen_class_dir(qwen_dir, tmp_path_factory):
  """Same files, but transformers rebuilds Qwen2's pipeline from its class."""
  folder = tmp_path_factory.mktemp('qwen_class')
  for f in qwen_dir.iterdir():
    shutil.copy(f, folder)
  cfg = json.loads((folder / 'tokenizer_config.json').read_text())
  cfg['tokenizer_class'] = 'Qwen2Tokenizer'
  (folder / 'tokenizer_config.json').write_text(json.dumps(cfg))
  return folder


@pytest.fixture(scope='module')
def llama3_dir(tmp_path_factory):
  specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>',
              '<|end_header_id|>', '<|eot_id|>']  # fmt: skip
  post = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(
          single='<|begin_of_text|> $A',
          special_tokens=[('<|begin_of_text|>', 0)],
      ),
  ])
  tok = _bpe(LLAMA3_SPLIT, specials, post)
  folder = tmp_path_factory.mktemp('llama3')
  return _save_hf(
      tok, folder, LLAMA3_TEMPLATE, generation_eos=[1, 4],
      bos_token='<|begin_of_text|>', eos_token='<|end_of_text|>',
  )  # fmt: skip


@pytest.fixture(scope='module')
def sp_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp('sp')
  (folder / 'corpus.txt').write_text('\n'.join(_corpus()), encoding='utf-8')
  spm.SentencePieceTrainer.train(
      input=str(folder / 'corpus.txt'),
      model_prefix=str(folder / 'tokenizer'),
      vocab_size=500,
      model_type='bpe',
      byte_fallback=True,
      character_coverage=1.0,
      normalization_rule_name='identity',  # Llama-2 settings
      remove_extra_whitespaces=False,
      split_digits=True,
      user_defined_symbols=['<|im_start|>', '<|im_end|>'],
      num_threads=1,
      minloglevel=2,
  )
  (folder / 'corpus.txt').unlink()
  cfg = {
      'tokenizer_class': 'LlamaTokenizer',
      'bos_token': '<s>',
      'eos_token': '</s>',
      'unk_token': '<unk>',
      'add_bos_token': True,
      'add_eos_token': False,
  }
  (folder / 'tokenizer_config.json').write_text(json.dumps(cfg))
  return folder


def _ref(folder):
  return transformers.AutoTokenizer.from_pretrained(str(folder))


HF_DIRS = ['qwen_dir', 'qwen_class_dir', 'llama3_dir']


@pytest.mark.parametrize('name', HF_DIRS)
def test_ids_and_decode_match_transformers(name, request):
  folder = request.getfixturevalue(name)
  ours, ref = toks.load_tokenizer(folder), _ref(folder)
  for special in (False, True):
    for s in STRINGS + SPECIAL_STRINGS:
      want = ref.encode(s, add_special_tokens=special)
      assert ours.encode(s, add_special_tokens=special) == want, (s, special)
      for skip in (False, True):
        assert ours.decode(want, skip) == ref.decode(
            want, skip_special_tokens=skip
        )
    want = [ref.encode(s, add_special_tokens=special) for s in STRINGS]
    assert ours.encode_batch(STRINGS, special) == want
  # Byte-level BPE is lossless up to the NFC normalizer.
  for s in STRINGS + SPECIAL_STRINGS:
    assert ours.decode(ours.encode(s)) == unicodedata.normalize('NFC', s)
  assert ours.vocab_size == len(ref)
  assert ours.get_vocab() == ref.get_vocab()


def test_special_ids_and_eos_ids(qwen_dir, llama3_dir):
  qwen, ref = toks.load_tokenizer(qwen_dir), _ref(qwen_dir)
  assert (qwen.eos_id, qwen.pad_id) == (ref.eos_token_id, ref.pad_token_id)
  assert qwen.bos_id is None and not qwen.adds_bos
  added = json.loads((qwen_dir / 'tokenizer.json').read_text())['added_tokens']
  assert qwen.special_ids == {t['id'] for t in added if t['special']}
  assert qwen.end_of_turn_id == qwen.token_to_id('<|im_end|>') == 2
  # eos, then generation_config's [im_end, endoftext] without duplicates.
  assert qwen.eos_ids == (2, 0)

  llama, ref = toks.load_tokenizer(llama3_dir), _ref(llama3_dir)
  assert (llama.bos_id, llama.eos_id) == (ref.bos_token_id, ref.eos_token_id)
  assert ref.pad_token_id is None and llama.pad_id == llama.eos_id  # fallback
  assert llama.adds_bos
  assert llama.end_of_turn_id == llama.token_to_id('<|eot_id|>') == 4
  assert llama.eos_ids == (1, 4)
  assert llama.id_to_token(3) == '<|end_header_id|>'


def _conversations():
  tool = {'name': 'calc', 'description': 'évalue <expr> & "quote"',
          'parameters': {'z': 1, 'a': [1, 2]}}  # fmt: skip
  user = {'role': 'user', 'content': 'What is \\frac{1}{2} of 10? 数学 😀'}
  reply = {'role': 'assistant', 'content': '  Half of 10 is \\boxed{5}.  \n'}
  system = {'role': 'system', 'content': 'Reason step by step.'}
  return [
      ([user], {}),
      ([system, user], {}),
      ([system, user, reply, {'role': 'user', 'content': 'And 20?'}], {}),
      ([user, reply], {}),
      ([user], {'tools': [tool]}),
  ]


@pytest.mark.parametrize('name', ['qwen_dir', 'llama3_dir'])
def test_chat_template_matches_transformers(name, request):
  folder = request.getfixturevalue(name)
  ours, ref = toks.load_tokenizer(folder), _ref(folder)
  extra = {'date_string': '26 Jul 2024'} if name == 'llama3_dir' else {}
  for conv, kwargs in _conversations():
    for gen in (True, False):
      want = ref.apply_chat_template(
          conv, tokenize=False, add_generation_prompt=gen, **kwargs, **extra
      )
      got = ours.apply_chat_template(conv, gen, **kwargs, **extra)
      assert got == want
      want_ids = ref.apply_chat_template(
          conv, add_generation_prompt=gen, return_dict=False, **kwargs, **extra
      )
      assert ours.apply_chat_template(conv, gen, True, **kwargs, **extra) == (
          want_ids
      )


def test_tojson_keeps_unicode_html_and_key_order(qwen_dir):
  ours = toks.load_tokenizer(qwen_dir)
  tool = {'z': 'é<&>', 'a': 1}
  text = ours.apply_chat_template(
      [{'role': 'user', 'content': 'q'}], tools=[tool]
  )
  assert '\n{"z": "é<&>", "a": 1}\n' in text


def test_strftime_now_is_today(llama3_dir):
  ours = toks.load_tokenizer(llama3_dir)
  before = datetime.datetime.now().strftime('%d %b %Y')
  text = ours.apply_chat_template([{'role': 'user', 'content': 'hi'}])
  after = datetime.datetime.now().strftime('%d %b %Y')
  assert f'Today Date: {before}' in text or f'Today Date: {after}' in text


def test_template_files_take_precedence(qwen_dir, tmp_path):
  for f in qwen_dir.iterdir():
    shutil.copy(f, tmp_path)
  cfg = json.loads((tmp_path / 'tokenizer_config.json').read_text())
  cfg['chat_template'] = 'CONFIG {{ messages[0].content }}'
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(cfg))
  (tmp_path / 'chat_template.jinja').write_text(
      'FILE {{ messages[0].content }}'
  )
  extra = tmp_path / 'additional_chat_templates'
  extra.mkdir()
  (extra / 'tool_use.jinja').write_text('TOOLS {{ tools | length }}')
  conv = [{'role': 'user', 'content': 'x'}]
  ours, ref = toks.load_tokenizer(tmp_path), _ref(tmp_path)
  assert ours.apply_chat_template(conv) == 'FILE x'
  assert ref.apply_chat_template(conv, tokenize=False) == 'FILE x'
  got = ours.apply_chat_template(conv, tools=[{'a': 1}])
  assert got == ref.apply_chat_template(conv, tools=[{'a': 1}], tokenize=False)
  assert got == 'TOOLS 1'
  # Without the files, the config's template is used.
  (tmp_path / 'chat_template.jinja').unlink()
  shutil.rmtree(extra)
  assert toks.load_tokenizer(tmp_path).apply_chat_template(conv) == 'CONFIG x'
  # The older list form names templates; without 'default' one must choose.
  cfg['chat_template'] = [{'name': 'rag', 'template': 'RAG'}]
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(cfg))
  listed = toks.load_tokenizer(tmp_path)
  assert listed.apply_chat_template(conv, chat_template='rag') == 'RAG'
  with pytest.raises(
      ValueError, match=r"no chat template 'default'.*\['rag'\]"
  ):
    listed.apply_chat_template(conv)


def test_template_errors_name_their_source(qwen_dir, llama3_dir, tmp_path):
  qwen = toks.load_tokenizer(qwen_dir)
  with pytest.raises(
      ValueError, match=r'chat_template\.jinja.*Unsupported role tool'
  ):
    qwen.apply_chat_template([{'role': 'tool', 'content': 'x'}])
  llama = toks.load_tokenizer(llama3_dir)
  bad = [{'role': 'assistant', 'content': 'x'}]
  with pytest.raises(ValueError, match='roles must alternate'):
    llama.apply_chat_template(bad)
  for f in qwen_dir.iterdir():
    shutil.copy(f, tmp_path)
  (tmp_path / 'chat_template.jinja').write_text('{% for m in messages %}')
  broken = toks.load_tokenizer(tmp_path)  # loading does not compile it
  with pytest.raises(
      ValueError, match=r'chat_template\.jinja.*TemplateSyntaxError'
  ):
    broken.apply_chat_template([{'role': 'user', 'content': 'x'}])
  assert broken.end_of_turn_id is None  # an unrenderable template has none


@pytest.mark.parametrize(
    'template',
    [
        '{% set _ = messages.append(1) %}',  # immutable sandbox
        '{{ "".__class__.__mro__[1].__subclasses__() }}',
        '{% set ns = namespace(__x=1) %}',
    ],
)
def test_templates_are_sandboxed(qwen_dir, template):
  ours = toks.load_tokenizer(qwen_dir)
  with pytest.raises(ValueError, match='chat_template argument.*SecurityError'):
    ours.apply_chat_template(
        [{'role': 'user', 'content': 'x'}], chat_template=template
    )


def test_messages_are_normalised_like_transformers(qwen_dir):
  ours, ref = toks.load_tokenizer(qwen_dir), _ref(qwen_dir)
  template = (
      '{% for m in messages %}{{ m.role }}|{{ m.get("content", "NONE") }}|'
      '{{ m.reasoning_content }}|{{ m.thinking }};{% endfor %}'
      '{{ tools is none }}{{ documents is none }}'
  )
  conv = [
      {'role': 'user', 'content': None},
      {'role': 'assistant', 'content': 'a', 'reasoning': 'r'},
  ]
  got = ours.apply_chat_template(conv, chat_template=template)
  assert got == ref.apply_chat_template(
      conv, chat_template=template, tokenize=False, add_generation_prompt=True
  )
  assert got == 'user|NONE||;assistant|a|r|r;TrueTrue'
  for bad in ([], 'hello', [{'content': 'no role'}], [{'role': 'u', 'x': {1}}]):
    with pytest.raises(ValueError, match='message|messages|JSON-like'):
      ours.apply_chat_template(bad)


def test_sentencepiece_matches_sentencepiece_and_transformers(sp_dir):
  ours = toks.load_tokenizer(sp_dir)
  sp = spm.SentencePieceProcessor(model_file=str(sp_dir / 'tokenizer.model'))
  ref = _ref(sp_dir)
  assert ours.is_sentencepiece and ours.vocab_size == sp.get_piece_size()
  assert ours.vocab_size == len(ref)
  assert (ours.bos_id, ours.eos_id, ours.unk_id) == (1, 2, 0)
  assert ours.pad_id == ours.eos_id  # no pad piece: fallback
  assert ours.special_ids == {0, 1, 2} and ours.adds_bos
  for s in STRINGS:
    assert ours.encode(s) == sp.encode(s)
    assert ours.encode(s, add_special_tokens=True) == [1] + sp.encode(s)
    assert ours.decode(sp.encode(s)) == sp.decode(sp.encode(s))
    if (
        s == s.lstrip()
    ):  # transformers 5 differs from sentencepiece on leading whitespace
      assert ours.encode(s, True) == ref.encode(s), s
  ids = [ours.bos_id] + sp.encode('a b') + [2] + sp.encode('c d')
  for skip in (False, True):
    assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip)
  assert ours.encode('<|im_start|>q') == sp.encode('<|im_start|>q')
  assert ours.token_to_id('<|im_start|>') in ours.encode('<|im_start|>q')


def test_sentencepiece_bos_and_chat_template(sp_dir, tmp_path):
  shutil.copy(sp_dir / 'tokenizer.model', tmp_path / 'tokenizer.model')
  cfg = {'add_bos_token': False, 'add_eos_token': True}
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(cfg))
  (tmp_path / 'chat_template.jinja').write_text(
      '{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}'
  )
  ours = toks.load_tokenizer(tmp_path / 'tokenizer.model')  # a file path
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / 'tokenizer.model'))
  assert not ours.adds_bos
  assert ours.encode('x y', add_special_tokens=True) == sp.encode('x y') + [2]
  assert ours.end_of_turn_id == sp.piece_to_id('<|im_end|>')
  assert ours.eos_ids == (2, sp.piece_to_id('<|im_end|>'))
  with pytest.raises(
      ValueError, match="wrote '<s>' as text.*user_defined_symbols"
  ):
    ours.apply_chat_template(
        [{'role': 'user', 'content': 'x'}], chat_template='{{ bos_token }}x'
    )


def test_arrays_and_batches_decode(qwen_dir):
  ours = toks.load_tokenizer(qwen_dir)
  rows = ours.encode_batch(['one 1', 'two 22'])
  want = [ours.decode(r) for r in rows]
  assert [ours.decode(np.asarray(r, np.int32)) for r in rows] == want
  assert [ours.decode(jnp.asarray(r)) for r in rows] == want
  padded = np.zeros((2, 8), np.int32)
  padded[0, : len(rows[0])], padded[1, : len(rows[1])] = rows[0], rows[1]
  got = ours.decode_batch(padded, skip_special_tokens=True)  # id 0 is special
  assert got == want
  with pytest.raises(ValueError, match='decode_batch'):
    ours.decode(padded)
  with pytest.raises(
      ValueError, match=r'token id 100000 is outside the vocabulary'
  ):
    ours.decode([1, 100000])
  with pytest.raises(
      ValueError, match="token '<nope>' is not in the vocabulary"
  ):
    ours.token_to_id('<nope>')
  with pytest.raises(ValueError, match='list of strings'):
    ours.encode_batch('abc')
  with pytest.raises(ValueError, match='not a str'):
    ours.encode(b'bytes')


def test_pickle_round_trip(qwen_dir, sp_dir):
  for folder in (qwen_dir, sp_dir):
    ours = toks.load_tokenizer(folder)
    ours.end_of_turn_id  # noqa: B018 -- cached values travel along
    back = pickle.loads(pickle.dumps(ours))
    assert back.encode(STRINGS[5]) == ours.encode(STRINGS[5])
    assert back.fingerprint() == ours.fingerprint()
    assert back.eos_ids == ours.eos_ids


def _copy_with(src, dst, edit_config=None, edit_json=None):
  dst.mkdir()
  for f in src.iterdir():
    shutil.copy(f, dst)
  for name, edit in (('tokenizer_config.json', edit_config),
                     ('tokenizer.json', edit_json)):  # fmt: skip
    if edit is not None:
      data = json.loads((dst / name).read_text())
      edit(data)
      (dst / name).write_text(json.dumps(data))
  return dst


def test_fingerprint_and_compatibility(qwen_dir, llama3_dir, tmp_path):
  qwen = toks.load_tokenizer(qwen_dir)
  code = (
      'from w2s_jax.data.tokenizers import load_tokenizer;'
      f'print(load_tokenizer({str(qwen_dir)!r}).fingerprint())'
  )
  env = {**os.environ, 'PYTHONHASHSEED': '12345'}
  out = subprocess.run(
      [sys.executable, '-c', code], env=env, capture_output=True, text=True,
      check=True, cwd=pathlib.Path(__file__).parents[2],
  )  # fmt: skip
  assert out.stdout.strip() == qwen.fingerprint()
  assert len(qwen.fingerprint()) == 64

  # An "instruct" copy: other eos, other template: same ids, other fingerprint.
  def instruct(cfg):
    cfg['eos_token'] = '<|endoftext|>'

  other = toks.load_tokenizer(_copy_with(qwen_dir, tmp_path / 'i', instruct))
  assert toks.same_vocabulary(qwen, other)
  toks.check_compatible(qwen, other)
  assert other.fingerprint() != qwen.fingerprint()
  with pytest.raises(
      ValueError, match=r'eos_id 2 \(teacher\) vs 0 \(student\)'
  ):
    toks.check_compatible(qwen, other, check_special_ids=True)
  moved = toks.load_tokenizer(_copy_with(qwen_dir, tmp_path / 'm'))
  assert moved.fingerprint() == qwen.fingerprint()

  def rename(data):
    vocab = data['model']['vocab']
    token = next(t for t, i in vocab.items() if i == 300)
    vocab['RENAMED'] = vocab.pop(token)
    # Drop the merges that make or use it, so the file stays consistent.
    merges = [m if isinstance(m, list) else m.split(' ') for m in
              data['model']['merges']]  # fmt: skip
    data['model']['merges'] = [
        m for m in merges if token not in m and ''.join(m) != token
    ]

  renamed = toks.load_tokenizer(
      _copy_with(qwen_dir, tmp_path / 'r', None, rename)
  )
  assert not toks.same_vocabulary(qwen, renamed)
  with pytest.raises(
      ValueError, match=r"id 300 is .* in weak but 'RENAMED' in strong"
  ):
    toks.check_compatible(qwen, renamed, what='weak/strong')
  llama = toks.load_tokenizer(llama3_dir)
  with pytest.raises(ValueError, match=r'vocab_size|id \d+ is'):
    toks.check_compatible(qwen, llama)


def test_named_tokens_are_template_variables(qwen_dir, tmp_path):
  def extra(cfg):
    cfg['extra_special_tokens'] = {'think_token': '<|im_start|>'}

  folder = _copy_with(qwen_dir, tmp_path / 'x', extra)
  ours, ref = toks.load_tokenizer(folder), _ref(folder)
  template = '{{ eos_token }}|{{ pad_token }}|{{ think_token }}|{{ bos_token }}'
  conv = [{'role': 'user', 'content': 'x'}]
  got = ours.apply_chat_template(conv, chat_template=template)
  assert got == ref.apply_chat_template(
      conv, chat_template=template, tokenize=False
  )
  assert got == '<|im_end|>|<|endoftext|>|<|im_start|>|'


def test_json_truncation_and_padding_are_ignored(qwen_dir, tmp_path):
  def truncate(data):
    data['truncation'] = {'direction': 'Right', 'max_length': 4, 'strategy':
                          'LongestFirst', 'stride': 0}  # fmt: skip
    data['padding'] = {'strategy': {'Fixed': 64}, 'direction': 'Right',
                       'pad_to_multiple_of': None, 'pad_id': 0,
                       'pad_type_id': 0, 'pad_token': '<|endoftext|>'}  # fmt: skip

  folder = _copy_with(qwen_dir, tmp_path / 't', None, truncate)
  ours, ref = toks.load_tokenizer(folder), _ref(folder)
  text = STRINGS[0]
  assert (
      ours.encode(text)
      == ref.encode(text)
      == toks.load_tokenizer(qwen_dir).encode(text)
  )
  assert len(ours.encode(text)) > 4


def test_wordpiece_cleanup_matches_transformers(tmp_path):
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  trainer = trainers.WordPieceTrainer(
      vocab_size=300, special_tokens=['[UNK]', '[SEP]'], show_progress=False
  )
  tok.train_from_iterator(_corpus()[:200], trainer)
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token='[UNK]', sep_token='[SEP]',
      clean_up_tokenization_spaces=True,
  )  # fmt: skip
  hf.save_pretrained(tmp_path)
  ours, ref = toks.load_tokenizer(tmp_path), _ref(tmp_path)
  text = "It's done , isn't it ? Yes ! 48 apples ."
  ids = ref.encode(text, add_special_tokens=False)
  assert ours.encode(text) == ids
  assert ours.decode(ids) == ref.decode(ids)
  assert ' ,' not in ours.decode(ids)  # the clean-up ran


def test_bpe_ignores_cleanup_like_transformers(qwen_dir, tmp_path):
  def cleanup(cfg):
    cfg['clean_up_tokenization_spaces'] = True

  folder = _copy_with(qwen_dir, tmp_path / 'c', cleanup)
  ours, ref = toks.load_tokenizer(folder), _ref(folder)
  ids = ref.encode("a , b . isn 't", add_special_tokens=False)
  assert ours.decode(ids) == ref.decode(ids) == "a , b . isn 't"


def test_no_end_of_turn_when_text_follows_the_reply(qwen_dir):
  backend = tokenizers.Tokenizer.from_file(str(qwen_dir / 'tokenizer.json'))
  template = (
      '{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}'
  )
  ours = toks.Tokenizer.create(
      backend,
      special_tokens={'eos_token': '<|endoftext|>'},
      chat_templates={'default': (template, 'test')},
  )
  assert ours.end_of_turn_id is None and ours.eos_ids == (0,)


def test_load_errors(qwen_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    toks.load_tokenizer(tmp_path / 'missing')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(
      FileNotFoundError, match=r'looked for tokenizer\.json, tokenizer\.model'
  ):
    toks.load_tokenizer(empty)
  (empty / 'vocab.json').write_text('{}')
  with pytest.raises(FileNotFoundError, match='save_pretrained'):
    toks.load_tokenizer(empty)

  bad = _copy_with(qwen_dir, tmp_path / 'bad')
  (bad / 'tokenizer.json').write_text('{"version": "1.0", oops}')
  with pytest.raises(
      ValueError, match=r'tokenizer\.json is not valid JSON \(line 1'
  ):
    toks.load_tokenizer(bad)
  (bad / 'tokenizer.json').write_text('{"model": 3}')
  with pytest.raises(ValueError, match='tokenizers library can read'):
    toks.load_tokenizer(bad)

  cfg = _copy_with(qwen_dir, tmp_path / 'cfg')
  (cfg / 'tokenizer_config.json').write_text('{"eos_token": }')
  with pytest.raises(
      ValueError, match=r'tokenizer_config\.json is not valid JSON'
  ):
    toks.load_tokenizer(cfg)

  def missing_eos(c):
    c['eos_token'] = '<|nope|>'

  with pytest.raises(
      ValueError, match=r"eos_token='<\|nope\|>' is not in the vocabulary"
  ):
    toks.load_tokenizer(_copy_with(qwen_dir, tmp_path / 'e', missing_eos))

  def wrong_added(c):
    c['added_tokens_decoder'] = {'1': {'content': '<|other|>', 'special': True}}

  with pytest.raises(ValueError, match="added token 1 is '<|other|>'"):
    toks.load_tokenizer(_copy_with(qwen_dir, tmp_path / 'a', wrong_added))

  gen = _copy_with(qwen_dir, tmp_path / 'g')
  (gen / 'generation_config.json').write_text('{"eos_token_id": "2"}')
  with pytest.raises(ValueError, match='eos_token_id must be an int'):
    toks.load_tokenizer(gen)
  (gen / 'generation_config.json').write_text('{"eos_token_id": [2, 99999]}')
  with pytest.raises(ValueError, match='eos id 99999 is outside'):
    toks.load_tokenizer(gen)

  plain = _copy_with(qwen_dir, tmp_path / 'p')
  (plain / 'chat_template.jinja').unlink()
  no_template = toks.load_tokenizer(plain)
  assert no_template.end_of_turn_id is None and no_template.eos_ids == (2, 0)
  with pytest.raises(ValueError, match='has no chat template'):
    no_template.apply_chat_template([{'role': 'user', 'content': 'x'}])

  (empty / 'tokenizer.model').write_bytes(b'not a model')
  with pytest.raises(ValueError, match='is not a sentencepiece model'):
    toks.load_tokenizer(empty)


def test_core_names_stay_importable_from_tokenizers():
  names = (
      'CHAT_TEMPLATE_DIR', 'CHAT_TEMPLATE_FILE', 'GENERATION_CONFIG',
      'SENTENCEPIECE_MODEL', 'SPECIAL_TOKENS_MAP', 'TOKENIZER_CONFIG',
      'TOKENIZER_JSON', 'Tokenizer',
  )  # fmt: skip
  for name in names:
    assert getattr(toks, name) is getattr(tokenizer_core, name), name
    assert name in toks.__all__, name
  assert all(hasattr(toks, name) for name in toks.__all__)
