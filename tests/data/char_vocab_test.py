"""Tests for w2s_jax.data.char_vocab."""

import json

import pytest

from w2s_jax.data import char_vocab as CV
from w2s_jax.data import synthetic as S


def _task_texts() -> list[str]:
  task = S.TaskConfig(modulus=13, ops="+-*", steps=3, distractors=1)
  rows = list(
      S.make_records(task, "train", 40, styles=tuple(S.STYLES), slip_prob=0.5)
  )
  rows += list(S.fact_records(S.FactTable.gold(13, "+-*"), 5))
  return [r["question"] + r["solution"] for r in rows]


def test_id_layout():
  tok = CV.build_char_tokenizer("b a\n")
  vocab = tok.get_vocab(with_added_tokens=True)
  assert vocab == {
      "<pad>": 0,
      "<bos>": 1,
      "<eos>": 2,
      "<unk>": 3,
      "\n": 4,
      " ": 5,
      "a": 6,
      "b": 7,
  }
  # Order and duplicates in the alphabet do not change the ids.
  assert CV.build_char_tokenizer("ab\n  b").get_vocab() == tok.get_vocab()
  default = CV.build_char_tokenizer()
  assert default.get_vocab_size() == 4 + len(S.ALPHABET)


def test_task_texts_roundtrip_without_unknowns():
  tok = CV.build_char_tokenizer()
  for text in _task_texts():
    ids = tok.encode(text).ids
    assert ids[0] == CV.BOS_ID and len(ids) == len(text) + 1
    assert CV.UNK_ID not in ids
    assert tok.decode(ids) == text  # <bos> skipped, nothing inserted
    bare = tok.encode(text, add_special_tokens=False).ids
    assert bare == ids[1:]
    assert [tok.id_to_token(i) for i in bare] == list(text)


def test_unknown_and_special_tokens():
  tok = CV.build_char_tokenizer("ab")
  ids = tok.encode("a?b<eos>", add_special_tokens=False).ids
  assert ids == [4, CV.UNK_ID, 5, CV.EOS_ID]
  assert tok.decode(ids, skip_special_tokens=False) == "a<unk>b<eos>"
  no_bos = CV.build_char_tokenizer("ab", add_bos=False)
  assert no_bos.encode("ab").ids == [4, 5]


def test_save_load_and_transformers_parity(tmp_path):
  out = CV.save_char_tokenizer(tmp_path / "tok", model_max_length=64)
  config = json.loads((out / "tokenizer_config.json").read_text())
  assert config["bos_token"] == "<bos>" and config["eos_token"] == "<eos>"
  assert config["pad_token"] == "<pad>" and config["model_max_length"] == 64
  ours = CV.load_char_tokenizer(out)
  transformers = pytest.importorskip("transformers")
  hf = transformers.AutoTokenizer.from_pretrained(out)
  assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)
  assert len(hf) == 4 + len(S.ALPHABET)
  texts = _task_texts()[:20]
  for text in texts:
    assert hf(text).input_ids == ours.encode(text).ids
    assert hf.decode(hf(text).input_ids, skip_special_tokens=True) == text
  batch = hf(texts[:4], padding=True, return_attention_mask=True)
  for ids, mask, text in zip(
      batch.input_ids, batch.attention_mask, texts[:4], strict=True
  ):
    assert sum(mask) == len(text) + 1
    assert all(i == CV.PAD_ID for i, m in zip(ids, mask, strict=True) if not m)


def test_alphabet_of():
  assert CV.alphabet_of(["ba", "ca", ""]) == "abc"
  assert CV.alphabet_of([]) == ""


def test_errors(tmp_path):
  with pytest.raises(ValueError, match="alphabet is empty"):
    CV.build_char_tokenizer("")
  with pytest.raises(FileNotFoundError, match="No tokenizer.json in"):
    CV.load_char_tokenizer(tmp_path)
  file = tmp_path / "f"
  file.write_text("x")
  with pytest.raises(NotADirectoryError, match="is a file"):
    CV.save_char_tokenizer(file)
