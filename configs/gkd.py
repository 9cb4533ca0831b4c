r"""GKD: on-policy distillation with JSD(β) to a fused teacher (docs/methods.md, "GKD and offline KD").

  python -m w2s_jax.main --config=configs/gkd.py:runlocal --workdir=/tmp/gkd
  # Study: --config.student.hf_path=<SFT export> --config.teacher.hf_path=<teacher>
  # Offline (λ = 0, no student samples): --config.loss.lambda_on_policy=0

Each step, with probability λ (``loss.lambda_on_policy``, 0.5) the
completions are student samples (T 0.9, no gradient), else the dataset's
(synthetic gold traces in ``data.style`` or a jsonl traces file with
``data.source='jsonl'``); loss Σ mask·JSD(β)/Σ mask, β 0.5, τ 1, no τ².
"""

import os

from w2s_jax import config_lib
from w2s_jax.methods import gkd


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False, traces="")
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py")
  c = config_lib.load(
      f"{base}:method=gkd" + (",runlocal" if a.runlocal else "")
  )
  c.rl.temperature = 0.9
  # TRL samples <= 128 new tokens; 64 fits the tiny presets (max_len 128).
  c.rl.max_new_tokens = 64 if not a.runlocal else 16
  # GKD's loss and defaults: w2s_jax/methods/gkd.py.
  c.loss = gkd.GKDHparams().to_config()
  c.teacher = config_lib.model_section(seed=1, d_model=96, num_layers=3)
  c.optim.lr = 1e-5 if not a.runlocal else 1e-3
  if a.traces:
    c.data.source = "jsonl"
    c.data.path = a.traces
  return c


def sweep(add):
  for lam in (0.0, 0.5, 1.0):
    add(**{"loss.lambda_on_policy": lam})
