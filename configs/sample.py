r"""Teacher traces (W2SR) or RSD traces, graded and filtered, as JSONL.

  # k=4 traces per problem from a (weak) teacher, all kept (W2SR data):
  python -m w2s_jax.main --config=configs/sample.py:teacher=/tmp/weak/export,tokenizer=/tmp/weak/tokenizer \
      --workdir=/tmp/traces
  # RSD traces: the teacher proposes, the student accepts (docs/methods.md, "RSD"):
  python -m w2s_jax.main --config=configs/sample.py:rsd,teacher=/tmp/big/export,student=/tmp/small/export,tokenizer=/tmp/small/tokenizer \
      --workdir=/tmp/rsd_traces
  # Also write (correct, incorrect) pairs for REDI/DPO/SimPO: add `pairs`.

Writes <workdir>/traces.jsonl ({prompt, completion, correct, ...}), ready for
configs/sft.py:traces=..., and with `pairs` <workdir>/pairs.jsonl.
"""

import ml_collections

from w2s_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg,
      teacher="",
      student="",
      tokenizer="",
      rsd=False,
      pairs=False,
      dataset="synthetic",
      k=4,
      runlocal=False,
  )
  c = ml_collections.ConfigDict()
  c.job = "rsd" if a.rsd else "sample"
  c.seed = 0
  c.teacher = config_lib.model_section(hf_path=a.teacher)
  c.student = config_lib.model_section(hf_path=a.student)
  c.data = config_lib.io_data_section(a.tokenizer or a.teacher, a.dataset)
  c.sample = ml_collections.ConfigDict(
      dict(
          dataset=a.dataset,
          split="train",
          path="",
          num_problems=16 if a.runlocal else 500,
          num_samples=a.k,
          temperature=0.7,
          top_p=0.95,
          max_new_tokens=32 if a.dataset == "synthetic" else 4096,
          batch_size=64 if a.dataset == "synthetic" else 8,
          require_correct=bool(a.rsd),
          max_fallback_rate=0.5,
          keep="shortest" if a.rsd else "all",
          rsd_threshold=0.01,
          rsd_num_proposals=5,
          rsd_top_k=20,
          pairs=a.pairs,
          style="terse",
          # 'any': a synthetic answer in any notation of the task counts.
          notation="strict",
          seed=0,
          **config_lib.SYNTHETIC_TASK,
      )
  )
  return c
