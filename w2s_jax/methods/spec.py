"""A training method as one object: ``MethodSpec`` and typed ``Hparams``.

Every method of the project is one frozen ``MethodSpec`` declared in its
family's module (``w2s_jax/methods/<family>.py``) and registered by name in
``w2s_jax.methods``. The spec says everything a trainer, the input pipeline
and config validation need to know; nothing outside the registry compares
``config.method`` with a string.

Hyperparameters are a frozen dataclass per method (a subclass of
``Hparams``): its field defaults are the method's defaults, written once.
The config's ``loss`` section is built from it (``Hparams.to_config``, a
type-safe ConfigDict, so a misspelt override fails at load) and read back
into it (``Hparams.from_config``), which refuses a key the method does not
have (naming the method and its keys) and checks every bound
(``Hparams.check``, naming the key and the bound). The step functions
receive the dataclass instance, a static value of the jitted step.

Shape legend: none (declarations only).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
  import ml_collections

# What one training example of the method is.
DataKind = Literal["tokens", "pairs", "topk", "prompts"]
DATA_KINDS = ("tokens", "pairs", "topk", "prompts")
# Which trainer runs it: the offline one (fixed data) or the RL one (the
# student samples during training).
JobKind = Literal["train", "rl"]


class HparamError(ValueError):
  """A ``loss.*`` key the method lacks, or a value outside its bound."""


def _coerce(name: str, tp: Any, value: Any, method: str) -> Any:
  """``value`` as the field's declared type (ints for floats are fine)."""
  origin = typing.get_origin(tp)
  if (
      tp is float
      and isinstance(value, (int, float))
      and not isinstance(value, bool)
  ):
    return float(value)
  if tp is int and isinstance(value, int) and not isinstance(value, bool):
    return value
  if tp is int and isinstance(value, float) and value == int(value):
    return int(value)
  if tp is bool and isinstance(value, bool):
    return value
  if tp is str and isinstance(value, str):
    return value
  if origin is tuple and isinstance(value, (tuple, list)):
    return tuple(value)
  if origin is Literal and value in typing.get_args(tp):
    return value
  want = getattr(tp, "__name__", str(tp))
  raise HparamError(
      f"config value loss.{name}={value!r} is invalid for method"
      f" {method!r}: it must be of type {want}; fix it with"
      f" --config.loss.{name}=..."
  )


@dataclasses.dataclass(frozen=True)
class Hparams:
  """Base of every method's hyperparameters (the config's ``loss`` section).

  Subclasses are frozen dataclasses whose fields all have defaults; they
  override ``check`` to state bounds with ``self.require``. ``method`` is
  set by ``from_config`` for error messages only.
  """

  # Keys the trainer fills in from facts it knows (the tokenizer's size, the
  # automatic chunk size), shared by every method.
  vocab_size: int = 0  # 0 = the model's own width
  chunk_size: int = 0  # vocab chunk of the chunked losses; 0 = from V and D

  METHOD: ClassVar[str] = ""

  def check(self) -> None:
    """Raises ``HparamError`` naming the key and its bound."""
    self.require("vocab_size", self.vocab_size >= 0, ">= 0 (0 = the model's)")
    self.require("chunk_size", self.chunk_size >= 0, ">= 0 (0 = automatic)")

  def require(self, key: str, ok: bool, bound: str) -> None:
    value = getattr(self, key)
    if not ok or (isinstance(value, float) and math.isnan(value)):
      raise HparamError(
          f"config value loss.{key}={value!r} is invalid for method"
          f" {self.method_name()!r}: it must be {bound}; fix"
          f" it with --config.loss.{key}=..."
      )

  def method_name(self) -> str:
    return getattr(self, "_method", "") or self.METHOD or type(self).__name__

  @classmethod
  def keys(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_config(
      cls, loss_cfg: Mapping[str, Any] | None, method: str = ""
  ) -> Hparams:
    """The typed, checked hyperparameters of ``loss_cfg`` (a ``loss`` dict)."""
    method = method or cls.METHOD
    items = dict(loss_cfg.items()) if loss_cfg is not None else {}
    unknown = sorted(set(items) - set(cls.keys()))
    if unknown:
      raise HparamError(
          f"config key loss.{unknown[0]} is not a hyperparameter of method"
          f" {method!r}; its keys are {sorted(cls.keys())} (docs/methods.md)."
      )
    hints = typing.get_type_hints(cls)
    kw = {k: _coerce(k, hints[k], v, method) for k, v in items.items()}
    hp = cls(**kw)
    object.__setattr__(hp, "_method", method)  # for messages; not a field
    hp.check()
    return hp

  def to_config(self) -> ml_collections.ConfigDict:
    """A type-safe ConfigDict of these values (the config's ``loss``)."""
    # Imported here: the specs themselves must load on a GPU image that has
    # only jax/flax/optax (tests/bench/accelerator.py).
    import ml_collections  # noqa: PLC0415

    return ml_collections.ConfigDict(dataclasses.asdict(self))

  def replace(self, **changes: Any) -> Hparams:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Everything that makes a method, declared in one place.

  Attributes:
    name: the config's ``method`` value.
    family: the module under ``w2s_jax/methods/`` that declares it.
    job: ``'train'`` (offline data) or ``'rl'`` (the student samples).
    hparams: the ``Hparams`` subclass of its ``loss`` section.
    loss: ``(student, frozen_models, micro_batch, norms, hp) -> (loss,
      metrics)``; ``frozen_models`` maps names ('teacher', 'ref') to models.
    normalizers: ``(batch [M, b, ...], hp) -> dict`` computed once per step
      over the whole step's batch.
    data: what one example is: token sequences, preference pairs, token
      sequences with a teacher top-k cache, or prompts to sample from.
    frozen: frozen models the loss itself runs ('teacher', 'ref').
    scores: RL only: ``hp -> tuple`` of the frozen models whose log-probs
      of the sampled tokens the scoring pass computes ('ref', 'teacher').
    policy_gradient: RL only: the loss is a clipped policy gradient over G
      rollouts per prompt with advantages (GRPO family).
    metrics: names of the metrics the loss reports (besides train/*).
    paper: arXiv id of the method's paper.
    doc: the section of docs/methods.md that states its math.
  """

  name: str
  family: str
  job: JobKind
  hparams: type[Hparams]
  loss: Callable[..., Any]
  normalizers: Callable[..., Any]
  data: DataKind
  frozen: tuple[str, ...] = ()
  scores: Callable[[Any], tuple[str, ...]] | None = None
  policy_gradient: bool = False
  metrics: tuple[str, ...] = ()
  paper: str = ""
  doc: str = ""
  # RL only: how the step's sequences are made (``ROLLOUT_KINDS``):
  # 'student' (G samples per prompt, graded, group-relative advantages),
  # 'guided' (the same, with stored teacher solutions injected into groups
  # that all fail: AMPO) or 'mixed' (one sequence per prompt: student samples
  # with probability ``hp.lambda_on_policy``, else the data's completions;
  # ungraded: GKD).
  rollouts: str = ""
  # RL only: ``(hp, step, rows) -> {key: [rows] array}``, per-step values
  # the loss reads from the batch (KDRL's β_t), so that a schedule needs
  # neither a recompile nor the step counter inside the loss.
  step_arrays: Callable[[Any, int, int], dict[str, Any]] | None = None

  def __post_init__(self):
    if self.data not in DATA_KINDS:
      raise ValueError(f"{self.name}: data must be one of {DATA_KINDS}.")
    if self.job not in ("train", "rl"):
      raise ValueError(f"{self.name}: job must be 'train' or 'rl'.")

  def hp(self, loss_cfg: Mapping[str, Any] | None) -> Hparams:
    """The checked hyperparameters of a config's ``loss`` section."""
    return self.hparams.from_config(loss_cfg, self.name)

  def score_models(self, hp: Hparams) -> tuple[str, ...]:
    return tuple(self.scores(hp)) if self.scores is not None else ()


# MethodSpec.rollouts of an RL method.
ROLLOUT_KINDS = ("student", "guided", "mixed")
