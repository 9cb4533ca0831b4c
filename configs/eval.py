r"""Evaluate a model: pass@k (unbiased), maj@k and length through the sampler.

  # A trained student on the synthetic task (greedy):
  python -m w2s_jax.main --config=configs/eval.py:model=/tmp/sft/export,tokenizer=/tmp/sft/tokenizer \
      --workdir=/tmp/eval
  # A real checkpoint on GSM8K, 4 samples per problem at T=0.6 (GPU/TPU):
  python -m w2s_jax.main --config=configs/eval.py:model=/ckpt/Qwen2.5-0.5B-Instruct,dataset=gsm8k,n=4 \
      --config.data.prompt_format=chat --workdir=/tmp/eval_gsm8k

Outputs: <workdir>/eval/items.jsonl (every completion, answer, verdict) and
<workdir>/eval/summary.json.
"""

import ml_collections

from w2s_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, model="", tokenizer="", dataset="synthetic", n=1, runlocal=False
  )
  c = ml_collections.ConfigDict()
  c.job = "eval"
  c.seed = 0
  c.model = config_lib.model_section(hf_path=a.model)
  c.data = config_lib.io_data_section(a.tokenizer or a.model, a.dataset)
  c.eval = ml_collections.ConfigDict(
      dict(
          dataset=a.dataset,
          split="test",
          path="",
          num_problems=50 if a.runlocal else 0,
          n=a.n,
          temperature=0.6 if a.n > 1 else 0.0,
          top_p=0.95 if a.n > 1 else 1.0,
          max_new_tokens=32 if a.dataset == "synthetic" else 1024,
          batch_size=64,
          style="terse",
          seed=0,
          **config_lib.SYNTHETIC_TASK,
      )
  )
  return c
