r"""SimPO: −log σ(β(s_w − s_l) − γ), reference-free (docs/methods.md, "REDI, DPO, SimPO" baseline;
β 2, γ 1, lr 5e-7 at LLM scale).

  python -m w2s_jax.main --config=configs/simpo.py:pairs=/tmp/p/pairs.jsonl \
      --config.student.hf_path=/tmp/sft/export --workdir=/tmp/simpo

The method and its hyperparameters (defaults, bounds): ``SimpoHparams`` in
w2s_jax/methods/pairs.py; this file is ``redi.py`` with ``method=simpo``.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_redi_config", os.path.join(os.path.dirname(__file__), "redi.py")
)
_redi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_redi)


def get_config(arg=None):
  arg = "method=simpo" + ("," + arg if arg else "")
  return _redi.get_config(arg)
