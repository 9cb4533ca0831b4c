r"""DPO against the frozen stage-1 model (docs/methods.md, "REDI, DPO, SimPO" baseline; β 0.001 best at
LLM scale, lr 2e-7). The reference is the student's own starting point.

  python -m w2s_jax.main --config=configs/dpo.py:pairs=/tmp/p/pairs.jsonl \
      --config.student.hf_path=/tmp/sft/export --workdir=/tmp/dpo

The method and its hyperparameters (defaults, bounds): ``DpoHparams`` in
w2s_jax/methods/pairs.py; this file is ``redi.py`` with ``method=dpo``.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_redi_config", os.path.join(os.path.dirname(__file__), "redi.py")
)
_redi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_redi)


def get_config(arg=None):
  arg = "method=dpo" + ("," + arg if arg else "")
  return _redi.get_config(arg)
