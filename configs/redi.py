r"""REDI stage 2 (reference-free, length-normalised: −s_w + α·s_l), after `sft`.

docs/methods.md, "REDI, DPO, SimPO": α = 0.8, lr 1e-6 at LLM scale (α = 1 needs lr <= 2e-7), one
epoch over (correct, incorrect) pairs of the same problem; start from the
stage-1 SFT export.

  python -m w2s_jax.main --config=configs/redi.py:pairs=/tmp/p/pairs.jsonl \
      --config.student.hf_path=/tmp/sft/export --workdir=/tmp/redi
"""

from w2s_jax import config_lib
from w2s_jax.methods import pairs


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runlocal=False, pairs="", method="redi")
  specs = {s.name: s for s in pairs.SPECS}
  if a.method not in specs:
    raise ValueError(
        f"redi.py: method must be one of {sorted(specs)}, got {a.method!r}."
    )
  c = config_lib.train_config(a.method)
  # The method's hyperparameters and their defaults: pairs.<Method>Hparams.
  c.loss = specs[a.method].hparams().to_config()
  c.data.source = "pairs_jsonl"
  c.data.path = a.pairs
  c.optim.lr = 1e-4
  c.optim.schedule = "linear"
  c.optim.warmup_frac = 0.1
  c.optim.weight_decay = 1e-4
  if a.runlocal:
    c.train.steps = 10
    c.train.batch_size = 8
    c.train.save_every = 10
  return c


def sweep(add):
  for alpha in (0.5, 0.8, 1.0):
    add(**{"loss.alpha": alpha})
