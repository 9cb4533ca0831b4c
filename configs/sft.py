r"""SFT on completions: W2SR (all weak-teacher traces), W2SR-P (correct only),
SFT on RSD traces, or gold traces of the synthetic task.

  # CPU, synthetic task, tiny student (seconds):
  python -m w2s_jax.main --config=configs/sft.py:runlocal --workdir=/tmp/sft
  # W2SR-P on a trace file written by the `sample` job:
  python -m w2s_jax.main --config=configs/sft.py:traces=/tmp/t/traces.jsonl,correct_only \
      --workdir=/tmp/w2srp
  # A real student (TPU/GPU): --config.student.hf_path=/ckpt/Qwen2.5-7B \
  #   --config.data.tokenizer=/ckpt/Qwen2.5-7B --config.data.prompt_format=chat

Defaults follow docs/methods.md, "W2SR" where they are scale-free (warmup 0.1, cosine).
"""

from w2s_jax import config_lib
from w2s_jax.methods import sft


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False, traces="", correct_only=False)
  c = config_lib.train_config("sft")
  c.loss = sft.SftHparams().to_config()
  c.optim.warmup_frac = 0.1
  c.optim.lr = 1e-3
  if a.traces:
    c.data.source = "jsonl"
    c.data.path = a.traces
  c.data.filter = "correct" if a.correct_only else "all"
  if a.runlocal:
    c.train.steps = 20
    c.train.batch_size = 16
    c.train.save_every = 10
    c.data.num_examples = 256
  return c


def sweep(add):
  for lr in (1e-3, 3e-4, 1e-4):
    add(**{"optim.lr": lr})
