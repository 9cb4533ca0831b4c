r"""OPD: on-policy distillation with the teacher's per-token reverse KL as a
dense reward (w2s_jax/methods/opd.py).

  python -m w2s_jax.main --config=configs/opd.py:runlocal --workdir=/tmp/opd
  # Study: --config.student.hf_path=<SFT export> --config.teacher.hf_path=<teacher>
  # With the task reward added: --config.loss.task_weight=1.0

The student samples G completions per prompt (T 1, the distribution whose
reverse KL is estimated), the teacher scores the sampled tokens, and each
token's advantage is −(log π_student − log π_teacher) of that token (plus
``loss.task_weight`` × the group's task advantage, 0 by default).
"""

import os

from w2s_jax import config_lib
from w2s_jax.methods import opd


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False)
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py")
  c = config_lib.load(
      f"{base}:method=opd" + (",runlocal" if a.runlocal else "")
  )
  c.rl.std_normalize = False  # the task term (if on): A = r − mean(r)
  c.loss = opd.OPDHparams().to_config()
  c.teacher = config_lib.model_section(seed=1, d_model=96, num_layers=3)
  c.optim.lr = 1e-5 if not a.runlocal else 1e-3
  return c


def sweep(add):
  for w in (0.0, 1.0):
    add(**{"loss.task_weight": w})
