r"""KDRL: GRPO + β_t·KD to a frozen teacher on the student's rollouts (§6).

  python -m w2s_jax.main --config=configs/kdrl.py:runlocal --workdir=/tmp/kdrl
  python -m w2s_jax.main --config=configs/kdrl.py:kd=k3,beta=const,mask=response,runlocal \
      --workdir=/tmp/kdrl_k3
  # Study: --config.student.hf_path=<SFT export> --config.teacher.hf_path=<teacher export>

The teacher scores the same sampled tokens (one fused jitted scoring call);
KD = Σ kd·mask·keep / Σ mask·keep with kd = ½R² (``kd=k2``, exact ∇RKL),
clamped k3 (``k3``, ∇FKL) or R as a reward (``k1reward``). β_t = max(5e-3 −
5e-5·t, 1e-3) (``beta=anneal``) or 5e-3 (``const``). ``mask``: KD on every
response (``none``), wrong responses only (``response``) or groups with no
correct response (``group``). The GRPO part is the ``grpo`` variant.
"""

import os

from w2s_jax import config_lib

KD = {"k2": "k2", "k3": "k3", "k1reward": "k1"}


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, runlocal=False, kd="k2", beta="anneal", mask="none", variant="grpo"
  )
  if a.kd not in KD:
    raise ValueError(f"kd={a.kd!r}: choose one of {sorted(KD)}.")
  if a.beta not in ("anneal", "const"):
    raise ValueError(f"beta={a.beta!r}: choose 'anneal' or 'const'.")
  if a.mask not in ("none", "response", "group"):
    raise ValueError(f"mask={a.mask!r}: choose 'none', 'response' or 'group'.")
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py")
  spec = f"{base}:method=kdrl,variant={a.variant}"
  c = config_lib.load(spec + (",runlocal" if a.runlocal else ""))
  c.loss.kd = True
  c.loss.kd_estimator = KD[a.kd]
  c.loss.kd_masking = a.mask
  c.loss.kd_agg = "token-mean"
  c.loss.kd_beta_init = 5e-3
  c.loss.kd_beta_min = 1e-3
  c.loss.kd_beta_decay = 5e-5 if a.beta == "anneal" else 0.0
  if a.beta == "const":
    c.loss.kd_beta_min = c.loss.kd_beta_init
  # KDRL's setup (binary reward, no reference KL).
  c.loss.beta_ref = 0.0
  c.teacher = config_lib.model_section(seed=1, d_model=96, num_layers=3)
  return c


def sweep(add):
  for beta in (1e-3, 5e-3, 2e-2):
    add(**{"loss.kd_beta_init": beta})
