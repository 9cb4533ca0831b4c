r"""Offline knowledge distillation: teacher fused into the step, or a cache.

Any divergence of the loss library (fkl, rkl, jsd, skl, srkl, tvd), with
temperature, τ², and the 'completion' or 'attention' mask mode of the
fidelity study (docs/methods.md, "GKD and offline KD"); the vocab-chunked loss by default.

Teacher fused into the jitted step (under stop_gradient):

  python -m w2s_jax.main --config=configs/distill.py:runlocal,loss=rkl --workdir=/tmp/kd

From a cached teacher top-k (docs/methods.md, "Divergences"; the teacher is never built while
training): write the cache once with the `topk_cache` job, then train on it
with the same data section. `loss.topk_mode` is 'tail_bucket' (k+1
categories, default), 'renormalized' or 'sparse_fkl'; tail_bucket and
sparse_fkl need loss.temperature == cache.temperature.

  python -m w2s_jax.main --config=configs/distill.py:runlocal,make_cache \
      --workdir=/tmp/kd_cache --config.cache.k=64
  python -m w2s_jax.main \
      --config=configs/distill.py:runlocal,topk_cache=/tmp/kd_cache/topk.array_record \
      --workdir=/tmp/kd_from_cache

Real models: --config.teacher.hf_path=/ckpt/Qwen2.5-1.5B \
  --config.student.hf_path=/ckpt/Qwen2.5-0.5B --config.data.tokenizer=/ckpt/Qwen2.5-0.5B \
  --config.loss.vocab_size=151665
"""

from w2s_jax import config_lib
from w2s_jax.methods import kd


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg,
      runlocal=False,
      loss="fkl",
      traces="",
      topk_cache="",
      make_cache=False,
      k=32,
  )
  c = config_lib.train_config("distill_cache" if a.topk_cache else "distill")
  if a.make_cache:
    c.job = "topk_cache"
  # Defaults (temperature, tau_sq, beta, alpha, mask_mode, chunked, the top-k
  # comparison: loss.topk, loss.topk_mode) are kd.DistillHparams'.
  c.loss = kd.DistillHparams(divergence=a.loss).to_config()
  c.teacher = config_lib.model_section(seed=1, d_model=96, num_layers=3)
  c.data.topk_cache = a.topk_cache
  # The `topk_cache` job: k entries per position at the loss temperature.
  c.cache = dict(k=a.k, temperature=1.0, batch_size=8)
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
