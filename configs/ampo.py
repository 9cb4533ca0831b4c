r"""AMPO: GRPO with teacher solutions injected on total failure (docs/methods.md, "AMPO").

  python -m w2s_jax.main --config=configs/ampo.py:runlocal --workdir=/tmp/ampo

Per prompt: G rollouts; when none is correct, up to 2 rollouts are replaced
by stored teacher solutions (here the synthetic task's gold traces in
``rl.ampo_styles``, one "teacher" per style), the best first by the current
student's comprehension score (its mean probability of the gold answer tokens
given the teacher's reasoning). Reward 0.9·acc + 0.1·format, advantages
without std, PPO clip 0.2/0.2 with dual clip 10 on-policy, f(p) = p/(p+0.1)
on injected tokens, Σ/(N·L_max), entropy bonus 0.001, no reference.
"""

import os

from w2s_jax import config_lib
from w2s_jax.methods import ampo


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False)
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py")
  c = config_lib.load(
      f"{base}:method=ampo" + (",runlocal" if a.runlocal else "")
  )
  c.rl.reward = "ampo"
  c.rl.std_normalize = False
  c.rl.ampo_styles = "terse,postfix,running"
  c.rl.ampo_max_teachers = 2
  # AMPO's loss and defaults: w2s_jax/methods/ampo.py.
  c.loss = ampo.AMPOHparams().to_config()
  c.optim.weight_decay = 0.1
  return c


def sweep(add):
  for coef in (0.0, 0.001):
    add(**{"loss.entropy_coef": coef})
