"""Tests for w2s_jax.data.formatting: prompt formats, example splits, masks.

References: transformers' AutoTokenizer / render_jinja_template on tokenizer
files trained here, and SentencePieceProcessor for sentencepiece.
"""

import random

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

from w2s_jax.data import chat_template
from w2s_jax.data import formatting as fm
from w2s_jax.data import tokenizers as toks

# Written out here rather than imported, so a typo in the module is caught.
INSTRUCTION = (
    'Please reason step by step, and put your final answer within \\boxed{}.'
)
DEFAULT_SYSTEM = 'You are a helpful assistant.'
SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r' ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+'
)
# Qwen2.5-style ChatML with a default system prompt.
CHATML = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    '{%- else %}'
    "{{- '<|im_start|>system\\n"
    + DEFAULT_SYSTEM
    + "<|im_end|>\\n' }}{%- endif %}{%- for m in messages %}{%- if not (m.role"
    " == 'system' and loop.first) %}{{- '<|im_start|>' + m.role + '\\n' +"
    " m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if"
    " add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token + '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Date: ' + date_string + '<|eot_id|>' }}"
    '{%- for m in messages %}'
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' }}"
    "{{- m.content | trim + '<|eot_id|>' }}"
    '{%- endfor %}'
    '{%- if add_generation_prompt %}'
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    '{%- endif %}'
)
QUESTIONS = [
    'Weng earns $12 an hour. How much for 50 minutes?',
    'Compute \\frac{1}{2} + \\frac{1}{3}. 数学 😀',
]
COMPLETIONS = [
    'She earns 12/60 = $0.2 per minute.\n\nSo 0.2 * 50 = \\boxed{10}.',
    '  \\frac{5}{6}, café\t\n',
    'x',
]


def _corpus():
  rng = random.Random(0)
  lines = []
  for _ in range(300):
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    lines.append(
        f'Question: Ken has {a} pens and {b} more.\nAnswer:\nKen has'
        f' {a} + {b} = {a + b}.\n\n\\boxed{{{a + b}}}'
    )
  return lines


def _bpe(specials, post=None):
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(SPLIT), behavior='isolated'),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = post or processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=600,
      special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(_corpus(), trainer)
  return tok


@pytest.fixture(scope='module')
def chatml_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp('chatml')
  tok = _bpe(['<|endoftext|>', '<|im_start|>', '<|im_end|>'])
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token='<|endoftext|>'
  )
  hf.chat_template = CHATML
  hf.save_pretrained(folder)
  return folder


@pytest.fixture(scope='module')
def llama3_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp('llama3')
  post = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(
          single='<|begin_of_text|> $A',
          special_tokens=[('<|begin_of_text|>', 0)],
      ),
  ])
  specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>',
              '<|end_header_id|>', '<|eot_id|>']  # fmt: skip
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=_bpe(specials, post),
      bos_token='<|begin_of_text|>',
      eos_token='<|end_of_text|>',
  )
  hf.chat_template = LLAMA3
  hf.save_pretrained(folder)
  return folder


def _ref(folder):
  return transformers.AutoTokenizer.from_pretrained(str(folder))


def _reference_messages(question, fmt_name):
  if fmt_name == 'chat':
    return [
        {'role': 'system', 'content': INSTRUCTION},
        {'role': 'user', 'content': question},
    ]
  if fmt_name == 'chat_user':
    return [{'role': 'user', 'content': question + '\n' + INSTRUCTION}]
  return [{'role': 'user', 'content': question}]


@pytest.mark.parametrize('fmt_name', ['chat', 'chat_user', 'chat_bare'])
def test_chatml_split_equals_full_conversation(chatml_dir, fmt_name):
  tok, ref = toks.load_tokenizer(chatml_dir), _ref(chatml_dir)
  im_end = ref.convert_tokens_to_ids('<|im_end|>')
  for question in QUESTIONS:
    messages = _reference_messages(question, fmt_name)
    prompt_ref = ref.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=False
    )
    assert fm.encode_prompt(tok, question, fmt_name).tolist() == prompt_ref
    for completion in COMPLETIONS:
      full_ref = ref.apply_chat_template(
          messages + [{'role': 'assistant', 'content': completion}],
          add_generation_prompt=False,
          return_dict=False,
      )
      ex = fm.build_example(tok, question, completion, fmt_name)
      assert ex['prompt_ids'].dtype == ex['completion_ids'].dtype == np.int32
      ids = ex['prompt_ids'].tolist() + ex['completion_ids'].tolist()
      assert ex['prompt_ids'].tolist() == prompt_ref
      assert full_ref[: len(ids)] == ids
      assert (
          ref.decode(full_ref[len(ids) :]) == '\n'
      )  # ChatML's trailing newline
      assert ex['completion_ids'][-1] == im_end
      assert ref.decode(ex['completion_ids']) == completion + '<|im_end|>'


def test_instruction_placement_is_visible_in_prompt(chatml_dir):
  tok = toks.load_tokenizer(chatml_dir)
  q = QUESTIONS[0]
  as_system = fm.render_prompt(tok, q, 'chat')
  assert as_system.startswith(f'<|im_start|>system\n{INSTRUCTION}<|im_end|>')
  as_user = fm.render_prompt(tok, q, 'chat_user')
  assert DEFAULT_SYSTEM in as_user  # the template's default system prompt
  assert f'{q}\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n' in as_user
  both = fm.PromptFormat(system_prompt='Be brief.')
  assert fm.build_messages(q, both)[0] == {
      'role': 'system',
      'content': f'Be brief.\n{INSTRUCTION}',
  }
  # Messages pass through untouched.
  conv = [{'role': 'user', 'content': 'hi'}]
  assert fm.build_messages(conv, 'chat') == conv
  assert fm.render_prompt(tok, conv, 'chat_user') == (
      f'<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n'
      '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
  )


def test_llama3_completion_ends_with_eot(llama3_dir):
  tok, ref = toks.load_tokenizer(llama3_dir), _ref(llama3_dir)
  fmt = fm.PromptFormat(template_kwargs={'date_string': '1 Jan 2025'})
  for completion in COMPLETIONS:
    ex = fm.build_example(tok, QUESTIONS[1], completion, fmt)
    messages = _reference_messages(QUESTIONS[1], 'chat') + [
        {'role': 'assistant', 'content': completion}
    ]
    full_ref = ref.apply_chat_template(
        messages, date_string='1 Jan 2025', return_dict=False
    )
    ids = ex['prompt_ids'].tolist() + ex['completion_ids'].tolist()
    assert ids[0] == ref.bos_token_id and ids.count(ref.bos_token_id) == 1
    assert ids == full_ref  # the template writes nothing after <|eot_id|>
    assert ex['completion_ids'][-1] == ref.convert_tokens_to_ids('<|eot_id|>')


@pytest.mark.parametrize('name', ['chatml_dir', 'llama3_dir'])
def test_plain_format(name, request):
  folder = request.getfixturevalue(name)
  tok, ref = toks.load_tokenizer(folder), _ref(folder)
  q, completion = QUESTIONS[0], COMPLETIONS[0]
  text = f'Question: {q}\nAnswer:'
  assert fm.render_prompt(tok, q, 'plain') == text
  ex = fm.build_example(tok, q, completion, 'plain')
  # Llama-3's post-processor adds BOS; the ChatML tokenizer adds nothing.
  assert ex['prompt_ids'].tolist() == ref.encode(text)
  full = ref.encode(f'{text} {completion}') + [ref.eos_token_id]
  assert ex['prompt_ids'].tolist() + ex['completion_ids'].tolist() == full
  boxed = fm.render_prompt(tok, q, 'plain_boxed')
  assert boxed == f'Question: {q}\n{INSTRUCTION}\nAnswer:'


def test_boundary_merge_is_an_error(chatml_dir):
  tok = toks.load_tokenizer(chatml_dir)
  assert len(tok.encode(':\n')) == 1  # the corpus taught BPE this merge
  fmt = fm.PromptFormat(kind='plain', instruction=None, plain_separator='\n')
  with pytest.raises(
      ValueError, match='merge into one token at their boundary'
  ):
    fm.build_example(tok, 'q', 'Ken has 3.', fmt)


def test_template_that_rewrites_the_prompt_is_an_error(chatml_dir):
  # Qwen3-like: the generation prompt opens an empty think block that the
  # rendered reply does not contain.
  template = CHATML.replace(
      "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think></think>'"
  )
  backend = tokenizers.Tokenizer.from_file(str(chatml_dir / 'tokenizer.json'))
  tok = toks.Tokenizer.create(
      backend,
      special_tokens={'eos_token': '<|endoftext|>'},
      chat_templates={'default': (template, 'qwen3-like')},
  )
  with pytest.raises(
      ValueError, match=r'renders the prompt differently.*<think>'
  ):
    fm.build_example(tok, 'q', 'a', 'chat')


def test_sentencepiece_chatml(tmp_path):
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(_corpus()), encoding='utf-8')
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(tmp_path / 'tokenizer'),
      vocab_size=300, model_type='bpe', byte_fallback=True,
      user_defined_symbols=['<|im_start|>', '<|im_end|>'],
      normalization_rule_name='identity', remove_extra_whitespaces=False,
      num_threads=1, minloglevel=2,
  )  # fmt: skip
  corpus.unlink()
  (tmp_path / 'chat_template.jinja').write_text(
      '{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}'
      '<|im_end|>\n{% endfor %}'
      '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}'
  )
  tok = toks.load_tokenizer(tmp_path)
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / 'tokenizer.model'))
  ex = fm.build_example(tok, 'Ken has 3 pens.', 'So 3 + 1 = 4.', 'chat_bare')
  full = (
      '<|im_start|>user\nKen has 3 pens.<|im_end|>\n'
      '<|im_start|>assistant\nSo 3 + 1 = 4.<|im_end|>'
  )
  ids = ex['prompt_ids'].tolist() + ex['completion_ids'].tolist()
  assert ids == sp.encode(full)
  assert ex['completion_ids'][-1] == sp.piece_to_id('<|im_end|>')
  plain = fm.build_example(tok, 'Ken has 3 pens.', 'Four.', 'plain')
  assert plain['prompt_ids'][0] == sp.bos_id()  # sentencepiece adds BOS
  assert plain['completion_ids'][-1] == sp.eos_id()


def test_completion_mask_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(50):
    p, c, pad = rng.integers(0, 6, size=3)
    want = [0] * p + [1] * c + [0] * pad
    got = fm.completion_mask(int(p), int(c), int(p + c + pad))
    assert got.dtype == np.int32 and got.tolist() == want
  assert fm.completion_mask(2, 3).tolist() == [0, 0, 1, 1, 1]
  with pytest.raises(
      ValueError, match='prompt_len \\+ completion_len <= length'
  ):
    fm.completion_mask(2, 3, 4)
  with pytest.raises(ValueError, match='non-negative'):
    fm.completion_mask(-1, 3)


def test_pad_example_masks_completion_and_eos(chatml_dir):
  tok = toks.load_tokenizer(chatml_dir)
  ex = fm.build_example(tok, QUESTIONS[0], COMPLETIONS[2], 'chat')
  p, c = len(ex['prompt_ids']), len(ex['completion_ids'])
  out = fm.pad_example(ex, p + c + 3, pad_id=tok.pad_id)
  tokens, mask = out['tokens'], out['mask']
  assert tokens.tolist() == (
      ex['prompt_ids'].tolist() + ex['completion_ids'].tolist() + [0] * 3
  )
  assert mask.tolist() == [0] * p + [1] * c + [0] * 3
  assert mask[p + c - 1] == 1 and tokens[p + c - 1] == tok.end_of_turn_id
  assert tok.pad_id == tok.eos_id  # no pad token: EOS stands in
  with pytest.raises(ValueError, match='pad_id must be an int'):
    fm.pad_example(ex, p + c, pad_id=None)
  with pytest.raises(ValueError, match='truncate=True'):
    fm.pad_example(ex, p + 1, pad_id=0)
  cut = fm.pad_example(ex, p + 1, pad_id=0, truncate=True)
  assert cut['tokens'].tolist() == ex['prompt_ids'].tolist() + [
      int(ex['completion_ids'][0])
  ]
  assert cut['mask'].tolist() == [0] * p + [1]


def test_format_errors(chatml_dir):
  tok = toks.load_tokenizer(chatml_dir)
  with pytest.raises(ValueError, match="unknown prompt format 'chatty'"):
    fm.get_format('chatty')
  with pytest.raises(ValueError, match="kind must be 'plain' or 'chat'"):
    fm.PromptFormat(kind='base')
  with pytest.raises(ValueError, match='instruction_placement'):
    fm.PromptFormat(instruction_placement='assistant')
  with pytest.raises(ValueError, match='must contain {question}'):
    fm.PromptFormat(kind='plain', plain_template='Q: {q}')
  with pytest.raises(ValueError, match="system_prompt needs kind='chat'"):
    fm.PromptFormat(kind='plain', system_prompt='x')
  with pytest.raises(ValueError, match='plain prompt takes a question string'):
    fm.render_prompt(tok, [{'role': 'user', 'content': 'q'}], 'plain')
  with pytest.raises(ValueError, match='completion must be a str'):
    fm.build_example(tok, 'q', None, 'chat')

  backend = tokenizers.Tokenizer.from_file(str(chatml_dir / 'tokenizer.json'))
  bare = toks.Tokenizer.create(backend)  # no eos, no template
  with pytest.raises(ValueError, match='has no chat template'):
    fm.build_example(bare, 'q', 'a', 'chat')
  with pytest.raises(ValueError, match='no eos_token to end the completion'):
    fm.build_example(bare, 'q', 'a', 'plain')


def test_render_chat_template_stays_importable_from_formatting():
  assert fm.render_chat_template is chat_template.render_chat_template
  assert all(hasattr(fm, name) for name in fm.__all__)
