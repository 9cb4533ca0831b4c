r"""The one-command weak-to-strong study on the synthetic task (CPU).

  # Default (`make demo`): one seed, every arm; 7 min on 2 idle CPU cores
  # from a fresh clone (33 min at load ~10; docs/study.md).
  python -m w2s_jax.main --config=configs/study.py --workdir=demo_out
  # Error bars over 3 seeds; a subset of the arm groups (a,b,c,d):
  python -m w2s_jax.main --config=configs/study.py:seeds=3,arms=ac \
      --workdir=demo3
  # End-to-end test size (target 3 min; 800 s measured under the same load)
  # and the notebook smoke size:
  python -m w2s_jax.main --config=configs/study.py:quick --workdir=/tmp/q
  python -m w2s_jax.main --config=configs/study.py:tiny --workdir=/tmp/t

Every stage is cached under <workdir>/seed<s>/<stage>; a rerun resumes.
Design and results: docs/study.md; the stages: w2s_jax/study.py.
"""

import ml_collections

from w2s_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, quick=False, tiny=False, seeds=1, rl=True, arms="abcd"
  )
  c = ml_collections.ConfigDict()
  c.job = "study"
  c.seeds = a.seeds
  c.arms = a.arms  # letters of the arm groups, e.g. "ac"
  c.run_rl = a.rl
  c.task = ml_collections.ConfigDict(dict(config_lib.SYNTHETIC_TASK))
  c.batch_size = 64
  c.num_examples = 3000
  # (d_model, layers) per role; see w2s_jax/study.py for what each is for.
  c.models = ml_collections.ConfigDict(
      dict(
          weak=dict(d_model=64, num_layers=2),
          strong=dict(d_model=64, num_layers=2),
          small=dict(d_model=48, num_layers=2),
      )
  )
  c.steps = ml_collections.ConfigDict(
      dict(
          weak_teacher=400,
          strong_teacher=800,
          strong_student=800,
          small_student=300,
          w2sr=150,
          rsd_sft=150,
          pref=60,
          kd=100,
          rl=20,
      )
  )
  c.lr = ml_collections.ConfigDict(
      dict(
          pretrain=2e-3,
          sft=1e-3,
          redi=1e-4,
          dpo=1e-4,
          simpo=1e-4,
          rl=1e-4,
      )
  )
  c.sample = ml_collections.ConfigDict(
      dict(num_problems=500, k=4, temperature=0.7)
  )
  c.rl = ml_collections.ConfigDict(
      dict(group_size=8, prompts_per_step=8, max_new_tokens=24)
  )
  c.eval = ml_collections.ConfigDict(
      dict(num_problems=200, n=4, temperature=0.7, greedy=True)
  )
  if a.quick or a.tiny:
    # Smoke sizes: one architecture for every role, so the persistent XLA
    # cache turns most compiles (init, train step, sampler) into hits.
    c.num_examples = 512
    for role in ("weak", "strong", "small"):
      c.models[role].d_model, c.models[role].num_layers = 32, 1
    f = 0.03 if a.tiny else 0.1
    for k in c.steps:
      c.steps[k] = max(int(c.steps[k] * f), 2)
    c.sample.num_problems = 32 if a.tiny else 64
    c.sample.k = 2
    c.eval.num_problems = 32 if a.tiny else 64
    c.eval.n = 2
    c.eval.greedy = not a.tiny
    c.rl.group_size, c.rl.prompts_per_step = 4, 4
    c.rl.max_new_tokens = 20
  return c


def sweep(add):
  for seeds in (3,):
    add(seeds=seeds)
