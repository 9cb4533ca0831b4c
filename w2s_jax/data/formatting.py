"""Prompt formats for math problems, example building and completion masks.

Two formats turn a question into a prompt:

* `plain`, for base models: `"Question: {question}\\nAnswer:"`, then
  `" " + completion + EOS`; BOS first when the tokenizer adds one.
* `chat`: the tokenizer's chat template, with the Qwen math instruction
  (`QWEN_MATH_INSTRUCTION`) as the system message (`chat`) or appended to the
  user turn (`chat_user`); the completion is the assistant reply and ends with
  the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`).

Mask convention (docs/methods.md section 1): for `tokens = prompt_ids +
completion_ids + padding`, mask = 1 on completion tokens, EOS / end-of-turn
included (else the model never learns to stop), 0 on prompt and padding.

`build_example` tokenizes the full rendered text once and splits it after the
prompt, so `prompt_ids + completion_ids` is exactly the tokenization of the
rendered conversation (for chat, up to the end-of-turn token: text the
template writes after it, such as ChatML's trailing newline, is dropped).
It raises when the prompt's own tokenization is not a prefix of that, which
happens when prompt and completion merge into one token at their boundary.

`render_chat_template` (re-exported from `chat_template`) renders a chat
template as transformers 5 does.

Shapes: L length.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from w2s_jax.data.chat_template import _messages, render_chat_template

if TYPE_CHECKING:
  from w2s_jax.data.tokenizers import Tokenizer

__all__ = [
    'FORMATS',
    'QWEN_MATH_INSTRUCTION',
    'PromptFormat',
    'build_example',
    'build_messages',
    'completion_mask',
    'encode_prompt',
    'get_format',
    'pad_example',
    'render_chat_template',  # re-exported from chat_template
    'render_prompt',
]

QWEN_MATH_INSTRUCTION = (
    'Please reason step by step, and put your final answer within \\boxed{}.'
)


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How a question becomes a prompt.

  Attributes:
    kind: 'plain' (text for base models) or 'chat' (the chat template).
    instruction: text asking for the answer format; None for none.
    instruction_placement: chat only: 'system' (the system message) or
      'user' (appended to the question after a newline). A plain prompt puts
      it after the question on a new line.
    system_prompt: chat only: a system message (the instruction follows it
      on a new line when placed there); with neither, the template's default
      system prompt applies (Qwen2.5 inserts one).
    plain_template: plain only: text holding `{question}`.
    plain_separator: plain only: text between the prompt and the completion.
    template_kwargs: extra chat-template variables (e.g. enable_thinking).
  """

  kind: str = 'chat'
  instruction: str | None = QWEN_MATH_INSTRUCTION
  instruction_placement: str = 'system'
  system_prompt: str | None = None
  plain_template: str = 'Question: {question}\nAnswer:'
  plain_separator: str = ' '
  template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in ('plain', 'chat'):
      raise ValueError(
          f"PromptFormat.kind must be 'plain' or 'chat', got {self.kind!r}."
      )
    if self.instruction_placement not in ('system', 'user'):
      raise ValueError(
          "PromptFormat.instruction_placement must be 'system' or 'user', got"
          f' {self.instruction_placement!r}.'
      )
    if '{question}' not in self.plain_template:
      raise ValueError(
          'PromptFormat.plain_template must contain {question}, got'
          f' {self.plain_template!r}.'
      )
    if self.kind == 'plain' and self.system_prompt is not None:
      raise ValueError(
          "PromptFormat.system_prompt needs kind='chat'; for a plain prompt"
          ' put the text into plain_template.'
      )


FORMATS: dict[str, PromptFormat] = {
    'plain': PromptFormat(kind='plain', instruction=None),
    'plain_boxed': PromptFormat(kind='plain'),
    'chat': PromptFormat(kind='chat'),
    'chat_user': PromptFormat(kind='chat', instruction_placement='user'),
    'chat_bare': PromptFormat(kind='chat', instruction=None),
    # Already-formatted prompts (the synthetic task's `Q:...?`): no template.
    'raw': PromptFormat(
        kind='plain',
        instruction=None,
        plain_template='{question}',
        plain_separator='',
    ),
}


def get_format(fmt: str | PromptFormat) -> PromptFormat:
  """A `PromptFormat` from itself or a name in `FORMATS`."""
  if isinstance(fmt, PromptFormat):
    return fmt
  if fmt not in FORMATS:
    raise ValueError(
        f'unknown prompt format {fmt!r}; use one of {sorted(FORMATS)} or a'
        ' PromptFormat.'
    )
  return FORMATS[fmt]


def build_messages(
    prompt: str | Sequence[Mapping[str, Any]], fmt: str | PromptFormat = 'chat'
) -> list[dict[str, Any]]:
  """The chat messages of a prompt (a question, or messages used as given)."""
  fmt = get_format(fmt)
  if not isinstance(prompt, str):
    return [dict(m) for m in _messages(prompt)]
  question, system = prompt, fmt.system_prompt
  if fmt.instruction is not None:
    if fmt.instruction_placement == 'user':
      question = f'{question}\n{fmt.instruction}'
    else:
      system = (
          fmt.instruction if system is None else f'{system}\n{fmt.instruction}'
      )
  messages = [] if system is None else [{'role': 'system', 'content': system}]
  return messages + [{'role': 'user', 'content': question}]


def render_prompt(
    tokenizer: Tokenizer,
    prompt: str | Sequence[Mapping[str, Any]],
    fmt: str | PromptFormat = 'chat',
) -> str:
  """The prompt text: for chat, ending with the assistant header."""
  fmt = get_format(fmt)
  if fmt.kind == 'chat':
    return tokenizer.apply_chat_template(
        build_messages(prompt, fmt), add_generation_prompt=True,
        **fmt.template_kwargs,
    )  # fmt: skip
  if not isinstance(prompt, str):
    raise ValueError(
        "a plain prompt takes a question string; use fmt='chat' for messages."
    )
  if fmt.instruction is not None:
    prompt = f'{prompt}\n{fmt.instruction}'
  return fmt.plain_template.replace('{question}', prompt)


def _bos(tokenizer: Tokenizer, fmt: PromptFormat) -> list[int]:
  # Chat templates write BOS themselves; plain text gets it like encode would.
  return (
      [tokenizer.bos_id] if fmt.kind == 'plain' and tokenizer.adds_bos else []
  )


def encode_prompt(
    tokenizer: Tokenizer,
    prompt: str | Sequence[Mapping[str, Any]],
    fmt: str | PromptFormat = 'chat',
) -> np.ndarray:
  """Prompt ids `[L]` int32, identical to `build_example`'s prompt_ids."""
  fmt = get_format(fmt)
  ids = _bos(tokenizer, fmt) + tokenizer.encode(
      render_prompt(tokenizer, prompt, fmt)
  )
  return np.asarray(ids, np.int32)


def build_example(
    tokenizer: Tokenizer,
    prompt: str | Sequence[Mapping[str, Any]],
    completion: str,
    fmt: str | PromptFormat = 'chat',
) -> dict[str, np.ndarray]:
  """Tokenizes one (prompt, completion) pair for SFT or distillation.

  Args:
    tokenizer: the tokenizer.
    prompt: the question, or (chat) the messages before the reply.
    completion: the reply text, without EOS / end-of-turn.
    fmt: a `PromptFormat` or a name in `FORMATS`.

  Returns:
    `prompt_ids` `[L]` and `completion_ids` `[L]` (int32); the completion
    ends with the end-of-turn token (chat) or EOS (plain, or a template
    without one). Their concatenation is the tokenization of the rendered
    text (module docstring).

  Raises:
    ValueError: no EOS to end with; the template renders the prompt
      differently once the reply is added; prompt and completion merge at
      their boundary.
  """
  fmt = get_format(fmt)
  if not isinstance(completion, str):
    raise ValueError(
        f'completion must be a str, got {type(completion).__name__}.'
    )
  prompt_text = render_prompt(tokenizer, prompt, fmt)
  if fmt.kind == 'plain':
    full_text = prompt_text + fmt.plain_separator + completion
  else:
    messages = build_messages(prompt, fmt)
    messages.append({'role': 'assistant', 'content': completion})
    full_text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=False, **fmt.template_kwargs
    )
    if not full_text.startswith(prompt_text):
      at = next(
          (i for i, (x, y) in enumerate(zip(prompt_text, full_text)) if x != y),
          min(len(prompt_text), len(full_text)),
      )
      raise ValueError(
          'the chat template renders the prompt differently once the reply is'
          f' added (from character {at}: {prompt_text[at:at + 40]!r} vs'
          f' {full_text[at:at + 40]!r}); such templates (e.g. ones that rewrite'
          ' earlier turns) cannot split prompt and completion.'
      )
  bos = _bos(tokenizer, fmt)
  prompt_ids = bos + tokenizer.encode(prompt_text)
  full_ids = bos + tokenizer.encode(full_text)
  if full_ids[: len(prompt_ids)] != prompt_ids:
    raise ValueError(
        'prompt and completion merge into one token at their boundary'
        f' ({prompt_text[-20:]!r} + {full_text[len(prompt_text):][:20]!r}), so'
        ' the prompt alone tokenizes differently; change the leading'
        ' whitespace of the completion or the separator.'
    )
  tail = full_ids[len(prompt_ids) :]
  eot = None
  if fmt.kind == 'chat':  # the marker after a reply in this very context
    eot = tokenizer.find_end_of_turn_id(
        build_messages(prompt, fmt), **fmt.template_kwargs
    )
  if eot is not None:
    if eot not in tail:
      raise ValueError(
          f'the chat template wrote no end-of-turn token ({eot}) after the'
          ' reply; check its assistant branch.'
      )
    tail = tail[: len(tail) - tail[::-1].index(eot)]
  elif tokenizer.eos_id is None:
    raise ValueError(
        f'{tokenizer.source} has no eos_token to end the completion; set'
        ' eos_token in tokenizer_config.json.'
    )
  else:
    tail = tail + [tokenizer.eos_id]
  return {
      'prompt_ids': np.asarray(prompt_ids, np.int32),
      'completion_ids': np.asarray(tail, np.int32),
  }


def completion_mask(
    prompt_len: int, completion_len: int, length: int | None = None
) -> np.ndarray:
  """Loss mask `[L]` int32: 0 on the prompt, 1 on the completion, 0 after.

  Args:
    prompt_len: prompt tokens.
    completion_len: completion tokens, EOS / end-of-turn included.
    length: total length with padding; default prompt + completion.
  """
  total = prompt_len + completion_len
  length = total if length is None else length
  if min(prompt_len, completion_len) < 0 or length < total:
    raise ValueError(
        'completion_mask needs non-negative lengths with prompt_len +'
        f' completion_len <= length, got {prompt_len}, {completion_len},'
        f' {length}.'
    )
  mask_L = np.zeros(length, np.int32)
  mask_L[prompt_len:total] = 1
  return mask_L


def pad_example(
    example: Mapping[str, np.ndarray],
    length: int,
    pad_id: int,
    truncate: bool = False,
) -> dict[str, np.ndarray]:
  """Right-pads one `build_example` output to `length`.

  Args:
    example: `prompt_ids` and `completion_ids`.
    length: the padded length.
    pad_id: the id put on padding (masked, so any valid id).
    truncate: cut examples longer than `length` (their EOS is lost) instead
      of raising.

  Returns:
    `tokens` `[L]` and `mask` `[L]` (int32), the mask per `completion_mask`.
  """
  p, c = len(example['prompt_ids']), len(example['completion_ids'])
  if not isinstance(pad_id, (int, np.integer)):
    raise ValueError(
        f'pad_id must be an int, got {pad_id!r}; a tokenizer without pad and'
        ' eos tokens needs an explicit pad id.'
    )
  if p + c > length and not truncate:
    raise ValueError(
        f'example has {p} prompt + {c} completion tokens > length {length};'
        ' raise the length, filter long examples, or pass truncate=True.'
    )
  ids = np.concatenate([example['prompt_ids'], example['completion_ids']])
  tokens_L = np.full(length, pad_id, np.int32)
  tokens_L[: min(p + c, length)] = ids[:length]
  mask_L = completion_mask(p, c, max(length, p + c))[:length]
  return {'tokens': tokens_L, 'mask': mask_L}
