r"""SSB: semantic soft bootstrapping (docs/methods.md, "SSB"), two stages.

Stage 1, ``data`` (job ``ssb_data``): the frozen base model does K rollouts
per problem, problems with >= 1 right and >= 1 wrong rollout get a hinted
prompt (one correct + one majority-wrong rollout), the base model answers it
at T 0.4, correct replies are kept, and the base model's top-k at T = 2 on
``hinted prompt || reply`` is cached, aligned to the student's reply rows.
Stage 2 (method ``ssb``): LoRA on the base, student input
``question || reply`` (no chat template by default: data.prompt_format),
loss λ_KD·T²·KL(p_T || q_T) + λ_CE·CE on the reply rows, T = 2.

  # Synthetic task on CPU, from a base model exported by configs/sft.py:
  python -m w2s_jax.main --config=configs/ssb.py:runlocal,stage=data,base=/tmp/sft/export \
      --workdir=/tmp/ssb_data
  python -m w2s_jax.main --config=configs/ssb.py:runlocal,base=/tmp/sft/export,data_dir=/tmp/ssb_data \
      --workdir=/tmp/ssb
  # GSM8K with an instruct model (chat-template teacher, raw student input):
  #   configs/ssb.py:dataset=gsm8k,stage=data,base=/ckpt/Qwen2.5-3B-Instruct \
  #   --config.data.tokenizer=/ckpt/Qwen2.5-3B-Instruct

The top-k + tail cache replaces the paper's full-vocabulary fp32 logits (a
documented deviation, docs/methods.md, "SSB"); cache.k = V recovers them.
"""

from w2s_jax import config_lib
from w2s_jax.methods import ssb as ssb_method


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg,
      runlocal=False,
      stage="train",
      base="",
      data_dir="",
      dataset="synthetic",
      k=64,
  )
  if a.stage not in ("data", "train"):
    raise ValueError(
        f"ssb.py: stage must be 'data' or 'train', got {a.stage!r}."
    )
  synthetic = a.dataset == "synthetic"
  c = config_lib.train_config("ssb")
  if a.stage == "data":
    c.job = "ssb_data"
  # The teacher is the frozen base model itself (the student's start).
  c.student = config_lib.model_section(hf_path=a.base)
  c.teacher = config_lib.model_section(hf_path=a.base)
  if not synthetic:
    c.data.tokenizer = a.base or c.data.tokenizer
  c.ssb = dict(
      dataset=a.dataset,
      split="train",
      num_problems=256,
      seed=0,
      num_rollouts=4,
      rollout_temperature=0.8,
      rollout_top_k=50,
      max_new_tokens=32 if synthetic else 8192,
      hint_temperature=0.4,
      batch_size=8,
      # 'raw': the synthetic char format; 'text': an instruction (chat).
      hint_style="raw" if synthetic else "text",
      teacher_format="raw" if synthetic else "chat",
      system="",
      style="terse",
      **config_lib.SYNTHETIC_TASK,
  )
  # Teacher top-k at the loss temperature (tail_bucket needs them equal).
  c.cache = dict(k=a.k, temperature=2.0, batch_size=8)
  c.data.source = "jsonl"
  c.data.path = f"{a.data_dir}/ssb.jsonl" if a.data_dir else ""
  c.data.topk_cache = f"{a.data_dir}/topk.array_record" if a.data_dir else ""
  c.data.prompt_format = "raw"  # the official code: no chat template
  c.data.max_len = 64 if synthetic else 8192
  # T = 2, λ_KD = 1, λ_CE = 0, FKL, tail bucket: ssb_method.SsbHparams.
  c.loss = ssb_method.SsbHparams().to_config()
  c.lora.rank = 32
  c.lora.alpha = 32.0
  c.optim.lr = 2e-4
  c.optim.schedule = "linear"
  c.optim.warmup_frac = 0.0
  c.train.batch_size = 4
  c.train.steps = 192  # 3 epochs of 256 problems at batch 4, if all kept
  if a.runlocal:
    c.ssb.num_problems = 64
    c.cache.k = min(a.k, 32)  # the char vocabulary has 40 ids
    c.lora.rank = 8
    c.optim.lr = 1e-3
    c.train.steps = 10
    c.train.save_every = 10
  return c


def sweep(add):
  for lam in (0.0, 0.1):
    add(**{"loss.lambda_ce": lam})
