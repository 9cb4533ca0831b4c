r"""KDRL: GRPO + β_t·KD to a frozen teacher on the student's rollouts (docs/methods.md, "KDRL").

  python -m w2s_jax.main --config=configs/kdrl.py:runlocal --workdir=/tmp/kdrl
  python -m w2s_jax.main --config=configs/kdrl.py:kd=k3,beta=const,mask=response,runlocal \
      --workdir=/tmp/kdrl_k3
  # Study: --config.student.hf_path=<SFT export> --config.teacher.hf_path=<teacher export>

The teacher scores the same sampled tokens (one fused jitted scoring call);
KD = Σ kd·mask·keep / Σ mask·keep with kd = ½R² (``kd=k2``, exact ∇RKL),
clamped k3 (``k3``, ∇FKL) or R as a reward (``k1reward``). β_t = max(5e-3 −
5e-5·t, 1e-3) (``beta=anneal``) or 5e-3 (``const``): ``kdrl.kd_beta``. ``mask``: KD on every
response (``none``), wrong responses only (``response``) or groups with no
correct response (``group``). The GRPO part is the ``grpo`` variant.
"""

import os

from w2s_jax import config_lib
from w2s_jax.methods import grpo, kdrl

KD = {"k2": "k2", "k3": "k3", "k1reward": "k1"}


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, runlocal=False, kd="k2", beta="anneal", mask="none", variant="grpo"
  )
  if a.kd not in KD:
    raise ValueError(f"kd={a.kd!r}: choose one of {sorted(KD)}.")
  if a.mask not in ("none", "response", "group"):
    raise ValueError(f"mask={a.mask!r}: choose 'none', 'response' or 'group'.")
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py")
  spec = f"{base}:method=kdrl,variant={a.variant}"
  c = config_lib.load(spec + (",runlocal" if a.runlocal else ""))
  # The loss (kdrl.kdrl_loss) and its β_t schedule (kdrl.kd_beta) are in
  # w2s_jax/methods/kdrl.py, with the defaults (KDRL's setup: no reference
  # KL); the GRPO part is the variant's preset.
  hp = kdrl.KDRLHparams(
      **grpo.VARIANTS[a.variant], kd_estimator=KD[a.kd], kd_masking=a.mask
  )
  c.loss = kdrl.schedule(a.beta, hp).to_config()
  c.teacher = config_lib.model_section(seed=1, d_model=96, num_layers=3)
  return c


def sweep(add):
  for beta in (1e-3, 5e-3, 2e-2):
    add(**{"loss.kd_beta_init": beta})
