r"""GRPO, Dr.GRPO and DAPO on the student's own samples (docs/methods.md, "GRPO" / "Surrogate rewards").

  # CPU, synthetic task, tiny random student (seconds):
  python -m w2s_jax.main --config=configs/grpo.py:runlocal --workdir=/tmp/grpo
  python -m w2s_jax.main --config=configs/grpo.py:variant=dapo,runlocal \
      --workdir=/tmp/dapo
  # From an SFT export (the usual start), surrogate format-length reward:
  python -m w2s_jax.main --config=configs/grpo.py:variant=drgrpo,reward=surrogate \
      --config.student.hf_path=/tmp/sft/export --workdir=/tmp/drgrpo

Variants: ``grpo`` (DeepSeekMath: std-normalised advantages, ε 0.2, dual clip
3, β_ref 0.04 with k3, seq-mean-token-mean), ``drgrpo`` (no std, constant
N·L_max normaliser, no reference, constant lr), ``dapo`` (ε 0.2/0.28, dual
clip 10, token-mean, rewards ±1, dynamic sampling, overlong shaping, weight
decay 0.1). Rewards: ``correct`` (the task's grader), ``surrogate``
(format + length, no gold answer), ``format`` (format only). Real models use
lr 1e-6 (docs/methods.md, "GRPO"); the CPU sizes use a larger lr.
"""

import ml_collections

from w2s_jax import config_lib
from w2s_jax.methods import grpo

VARIANTS = tuple(grpo.VARIANTS)


def rl_section(**overrides) -> ml_collections.ConfigDict:
  """The ``rl`` section shared by the RL configs."""
  rl = dict(
      group_size=8,
      prompts_per_step=8,
      max_new_tokens=32,
      temperature=1.0,
      top_p=1.0,
      updates_per_rollout=1,
      std_normalize=True,
      eps=1e-6,
      dynamic_sampling=False,
      max_resample_batches=10,
      overlong_buffer=0,
      overlong_factor=1.0,
      reward="correct",
      reward_fn="",
      reward_timeout_s=5.0,
      # Graders run in worker processes with a deadline per completion (a
      # hung grader is killed); 0 grades in-process without deadlines.
      reward_workers=2,
      correct_reward=1.0,
      wrong_reward=0.0,
      task="synthetic",
      ampo_styles="",
      ampo_max_teachers=2,
      # Rollouts from a cast copy of the policy ('' = its own weights) and
      # truncated importance sampling min(pi_train/pi_sample, C) of the
      # policy term (0 = off; docs/losses.md).
      sample_dtype="",
      tis_cap=0.0,
  )
  rl.update(overrides)
  return ml_collections.ConfigDict(rl)


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, runlocal=False, variant="grpo", reward="correct", method="grpo"
  )
  if a.variant not in VARIANTS:
    raise ValueError(f"variant={a.variant!r}: choose one of {VARIANTS}.")
  if a.reward not in ("correct", "surrogate", "format"):
    raise ValueError(
        f"reward={a.reward!r}: choose 'correct', 'surrogate' or 'format'."
    )
  c = config_lib.train_config(a.method)
  c.job = "rl"
  c.rl = rl_section(reward=a.reward)
  c.optim.lr = 1e-6
  c.optim.schedule = "constant"
  c.optim.grad_clip = 1.0
  # The loss keys are the method's typed hparams (w2s_jax/methods/grpo.py,
  # defaults written there); a variant is a preset of them.
  c.loss = grpo.GRPOHparams(**grpo.VARIANTS[a.variant]).to_config()
  if a.variant == "drgrpo":
    c.rl.std_normalize = False
  elif a.variant == "dapo":
    c.rl.dynamic_sampling = True
    c.rl.overlong_buffer = 8
    c.rl.correct_reward, c.rl.wrong_reward = 1.0, -1.0
    c.optim.weight_decay = 0.1
  if a.runlocal:
    c.train.steps = 4
    c.train.save_every = 2
    c.train.log_every = 1
    c.optim.lr = 3e-4
    c.rl.group_size = 4
    c.rl.prompts_per_step = 4
    c.rl.max_new_tokens = 16
    c.rl.max_resample_batches = 1
    c.rl.overlong_buffer = min(c.rl.overlong_buffer, 4)
    c.data.num_examples = 64
  return c


def sweep(add):
  for lr in (1e-6, 3e-6):
    for agg in ("token-mean", "seq-mean-token-mean"):
      add(**{"optim.lr": lr, "loss.agg": agg})
