"""Orbax checkpoints of the student: params + optimizer + step + RNG + data.

The only module that talks to Orbax. A checkpoint holds the *trainable* state
(student parameters, LoRA adapters when used, optimizer state), the step, the
PRNG key and the data iterator state (JSON). The frozen teacher is never
written: it is reloaded from its own checkpoint.

Orbax writes each step into a temporary directory and renames it when
complete, so a process killed mid-write leaves the previous step restorable;
``latest_step`` only ever sees finished steps. Restores go into abstract,
sharded targets, so every array lands directly on its devices.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _check_writable(directory: str) -> None:
  parent = directory
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise NotADirectoryError(
        f"checkpoint directory {directory!r} cannot be created: {parent!r} is"
        " a file; pass a --workdir that is a directory."
    )
  if parent and not os.access(parent, os.W_OK):
    raise PermissionError(
        f"checkpoint directory {directory!r} is not writable (no write"
        f" permission on {parent!r}); pass a --workdir you can write to."
    )


class Checkpointer:
  """Saves every ``save_every`` steps and keeps the newest ``keep``."""

  def __init__(
      self,
      directory: str,
      save_every: int = 1000,
      keep: int = 2,
      async_save: bool = False,
  ):
    directory = os.path.abspath(directory)
    _check_writable(directory)
    self.directory = directory
    self.save_every = max(int(save_every), 1)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # the interval is decided in save()
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    self._mngr = ocp.CheckpointManager(
        directory, options=options, item_names=("state", "meta")
    )
    # Orbax removes the temporary directories of interrupted saves in a
    # background thread. Wait for it: a run that fails right after start-up
    # (a bad tokenizer, say) would otherwise exit under that thread, which
    # then prints a traceback after the one-line error.
    await_cleanup = getattr(
        self._mngr, "_maybe_await_cleanup_tmp_directory", None
    )
    if await_cleanup is not None:
      await_cleanup()

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(
      self,
      step: int,
      state: Any,
      meta: dict[str, Any] | None = None,
      force: bool = False,
  ) -> bool:
    """Saves ``state`` (a pytree of plain arrays: store PRNG keys as
    ``jax.random.key_data``) and JSON ``meta`` at ``step``.

    Returns whether a checkpoint was written (the interval may skip it).
    """
    if not force and step % self.save_every:
      return False
    saved = self._mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(dict(meta or {})),
        ),
        force=force,
    )
    return bool(saved)

  def restore(
      self, abstract_state: Any, step: int | None = None
  ) -> tuple[Any, dict[str, Any], int]:
    """Restores into ``abstract_state`` (arrays or ShapeDtypeStructs with
    shardings). Returns (state, meta, step)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    target = jax.tree.map(_abstract, abstract_state)
    out = self._mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return out["state"], dict(out["meta"] or {}), step

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON ``meta`` of ``step`` (default: the latest), without the state;
    {} when there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return {}
    out = self._mngr.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )
    return dict(out["meta"] or {})

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def _abstract(x: Any) -> Any:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  sharding = getattr(x, "sharding", None)
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
