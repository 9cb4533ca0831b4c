r"""Offline knowledge distillation with the teacher fused into the step.

Any divergence of the loss library (fkl, rkl, jsd, skl, srkl, tvd), with
temperature, τ², and the 'completion' or 'attention' mask mode of the
fidelity study (METHODS §7); the vocab-chunked loss by default.

  python -m w2s_jax.main --config=configs/distill.py:runlocal,loss=rkl --workdir=/tmp/kd
  # Real models: --config.teacher.hf_path=/ckpt/Qwen2.5-1.5B \
  #   --config.student.hf_path=/ckpt/Qwen2.5-0.5B --config.data.tokenizer=/ckpt/Qwen2.5-0.5B \
  #   --config.loss.vocab_size=151665
"""

from w2s_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False, loss="fkl", traces="")
  c = config_lib.train_config("distill")
  c.loss.divergence = a.loss
  c.loss.temperature = 1.0
  c.loss.tau_sq = True
  c.loss.beta = 0.5
  c.loss.alpha = 0.1
  c.loss.mask_mode = "completion"
  c.loss.chunked = True
  c.teacher = config_lib.model_section(seed=1, d_model=96, num_layers=3)
  if a.traces:
    c.data.source = "jsonl"
    c.data.path = a.traces
  if a.runlocal:
    c.train.steps = 20
    c.train.batch_size = 16
    c.train.save_every = 10
    c.data.num_examples = 256
  return c


def sweep(add):
  for loss in ("fkl", "rkl", "jsd"):
    add(**{"loss.divergence": loss})
