"""Host batches: P processes x (G/P) rows assemble to the 1-process batch."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from w2s_jax.data import synthetic, traces
from w2s_jax.training import inputs


def _data(**over):
  d = dict(
      source="synthetic",
      path="",
      tokenizer="char",
      prompt_format="raw",
      filter="all",
      max_len=48,
      pack=False,
      num_examples=64,
      split="train",
      style="terse",
      modulus=11,
      ops="+*",
      steps=2,
      distractors=0,
  )
  d.update(over)
  return ConfigDict(d)


def _assemble(method, data, tok, g, micro, procs, n_batches=3):
  """Global micro-batches [M, G/M, ...] as the mesh would see them."""
  its = [
      inputs.make_batches(
          method,
          data,
          tok,
          g,
          seed=3,
          micro_batches=micro,
          process_index=p,
          process_count=procs,
      )
      for p in range(procs)
  ]
  out = []
  for _ in range(n_batches):
    locals_ = [inputs.split_micro(next(it), micro) for it in its]
    out.append(
        {k: np.concatenate([b[k] for b in locals_], axis=1) for k in locals_[0]}
    )
  return out


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("procs,micro", [(2, 1), (2, 2), (4, 2)])
def test_grain_batches_split_across_processes(tmp_path, pack, procs, micro):
  tok = inputs.load_tokenizer("char", str(tmp_path))
  data = _data(pack=pack)
  one = _assemble("sft", data, tok, 8, micro, 1)
  many = _assemble("sft", data, tok, 8, micro, procs)
  for a, b in zip(one, many):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Not trivially equal: consecutive batches differ.
  assert not np.array_equal(one[0]["tokens"], one[1]["tokens"])


def test_pair_batches_split_across_processes(tmp_path):
  tok = inputs.load_tokenizer("char", str(tmp_path))
  probs = synthetic.sample_problems(synthetic.TaskConfig(), "train", 16)
  rng = np.random.default_rng(0)
  path = str(tmp_path / "pairs.jsonl")
  traces.write_preferences(
      path,
      [
          traces.PreferenceRecord(
              synthetic.prompt(p),
              synthetic.gold_trace(p),
              synthetic.noisy_trace(p, "terse", slip_prob=1.0, rng=rng),
          )
          for p in probs
      ],
  )
  data = _data(source="pairs_jsonl", path=path)
  one = _assemble("redi", data, tok, 4, 2, 1, n_batches=5)
  two = _assemble("redi", data, tok, 4, 2, 2, n_batches=5)
  for a, b in zip(one, two):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_process_rows_layout():
  # G=8, M=2, P=2: process 0 gets rows 0,1 | 4,5 and process 1 gets 2,3 | 6,7.
  np.testing.assert_array_equal(inputs.process_rows(8, 2, 0, 2), [0, 1, 4, 5])
  np.testing.assert_array_equal(inputs.process_rows(8, 2, 1, 2), [2, 3, 6, 7])
  with pytest.raises(ValueError, match=r"batch_size 6 must be divisible.*4"):
    inputs.process_rows(6, 2, 0, 2)
  with pytest.raises(
      ValueError, match=r"process_index=2 must be in \[0, process_count=2\)"
  ):
    inputs.process_rows(8, 1, 2, 2)


def test_synthetic_style_mixture(tmp_path):
  """``data.style`` lists styles; each problem is written once per entry."""
  tok = inputs.load_tokenizer("char", str(tmp_path))
  assert inputs.synthetic_styles(_data(style="terse")) == ("terse",)
  mix = _data(style="running, postfix,running", num_examples=8)
  assert inputs.synthetic_styles(mix) == ("running", "postfix", "running")
  examples = inputs.sft_examples(mix, tok)
  assert len(examples) == 3 * 8
  texts = [tok.decode(list(e["completion_ids"])) for e in examples]
  postfix = [t for t in texts if " " in t]  # postfix: "A:9 0*=0;0 0+=0#0"
  assert len(postfix) == 8
  with pytest.raises(ValueError, match="data.style='terse,tersely'"):
    inputs.synthetic_styles(_data(style="terse,tersely"))
