"""The method registry: every training method, by its config name.

  from w2s_jax import methods
  spec = methods.get(config.method)      # a methods.spec.MethodSpec
  hp = spec.hp(config.loss)              # its typed, checked hyperparameters

Each family module (``sft``, ``kd``, ``pairs``, ``ssb``, ``grpo``, ``kdrl``,
``gkd``, ``ampo``, ...) declares its specs and lists them in ``SPECS``;
``FAMILIES`` below names the modules. Adding a method is one module here
(plus its config and test): README, "Adding a method".
"""

from __future__ import annotations

import importlib

from w2s_jax.methods.spec import HparamError, Hparams, MethodSpec

__all__ = ["FAMILIES", "HparamError", "Hparams", "MethodSpec", "get", "names"]

# Family modules, each with a module-level ``SPECS: tuple[MethodSpec, ...]``.
FAMILIES: tuple[str, ...] = (
    "sft",
    "kd",
    "pairs",
    "ssb",
    "grpo",
    "kdrl",
    "gkd",
    "ampo",
    "opd",
)

_REGISTRY: dict[str, MethodSpec] = {}


def _load() -> dict[str, MethodSpec]:
  if not _REGISTRY:
    for family in FAMILIES:
      module = importlib.import_module(f"w2s_jax.methods.{family}")
      for spec in module.SPECS:
        if spec.name in _REGISTRY:
          raise ValueError(f"method {spec.name!r} is declared twice.")
        _REGISTRY[spec.name] = spec
  return _REGISTRY


def names(job: str | None = None) -> tuple[str, ...]:
  """Every method's name (of one job kind, if given), sorted."""
  return tuple(
      sorted(n for n, s in _load().items() if job is None or s.job == job)
  )


def get(name: str, job: str | None = None) -> MethodSpec:
  """The spec of ``name``; an unknown name (or one of another job) raises."""
  registry = _load()
  if name not in registry:
    raise ValueError(
        f"config value method={name!r} is unknown; choose one of"
        f" {list(names())} (w2s_jax/methods/)."
    )
  spec = registry[name]
  if job is not None and spec.job != job:
    raise ValueError(
        f"method {name!r} runs as job {spec.job!r}, not {job!r}; set"
        f" --config.job={spec.job} (job {job!r} runs {list(names(job))})."
    )
  return spec
