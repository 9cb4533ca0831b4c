"""The weak-to-strong study on the synthetic task (``make demo``).

  runner  the models and arms per seed, the claims, the run
  stages  cached, fingerprinted stages (train / sample / pairs / eval)
  report  per-model table, per-claim statistics, figure, results.json

Run it with ``python -m w2s_jax.main --config=configs/study.py
--workdir=demo_out``; design and results are in docs/study.md.
"""

from w2s_jax.study.runner import check, run

__all__ = ["check", "run"]
