"""The decode loop's ``[D, V]`` copy of a tied embedding table (XLA:CPU only).

Decoding one token is a matrix-vector product with the unembedding per step.
A tied table is stored ``[V, D]``; XLA:CPU reads a ``[D, V]`` matrix about
1.3-1.8x faster in that product (one core: 24.7 vs 18.5 GB/s at V = 151,936,
D = 512), so CPU decoding runs on a transposed copy. Making the copy is slow
(a 311 MB table takes ~0.27 s: XLA:CPU transposes at ~2 GB/s), which used to
be paid on every ``generate`` call. Here it is made once per table and kept
while that table is alive, for the most recent ``MAX_TABLES`` tables, so
repeated calls on one model (evaluating a dataset batch by batch, RSD with
the same teacher and student) reuse it. The cost is one more copy of each
kept table in host memory; ``clear()`` drops them.

Accelerators read the table as stored (no copy: None).
"""

from __future__ import annotations

import weakref
from typing import Any

import jax

# Tables whose copies are kept (a teacher and a student for RSD).
MAX_TABLES = 2

# id(table) -> (weak reference to the table, its [D, V] copy); oldest first.
_copies: dict[int, tuple[weakref.ref, jax.Array]] = {}
_transpose = jax.jit(lambda table_VD: table_VD.T)


def _alive(ref: weakref.ref) -> bool:
  table = ref()
  return table is not None and not table.is_deleted()


def _drop_dead() -> None:
  for key in [k for k, (ref, _) in _copies.items() if not _alive(ref)]:
    del _copies[key]


def clear() -> None:
  """Drops every kept copy."""
  _copies.clear()


def num_kept() -> int:
  """How many tables have a live copy kept."""
  _drop_dead()
  return len(_copies)


def decode_unembedding(cfg: Any, state: Any) -> jax.Array | None:
  """The ``[D, V]`` copy of a tied table for the decode loop, or None.

  Args:
    cfg: the model's ``TransformerConfig``.
    state: the model's parameters (``nnx.split``), holding ``embed_VD``.

  Returns:
    None on accelerators and for untied models; otherwise the table
    transposed (with the table's sharding transposed), made on the first
    call for this table and reused while the table is alive and not deleted
    (a training step that donates the parameters deletes it).
  """
  if not cfg.tie_embeddings or jax.default_backend() != "cpu":
    return None
  table = state["embed_VD"].get_value()
  if isinstance(table, jax.core.Tracer):  # under a caller's jit: no reuse
    return table.T
  _drop_dead()
  key = id(table)
  kept = _copies.get(key)
  if kept is not None and kept[0]() is table:
    _copies[key] = _copies.pop(key)  # most recently used last
    return kept[1]
  w_DV = _transpose(table)

  def forget(ref, key=key):  # the table was garbage-collected
    if _copies.get(key, (None,))[0] is ref:
      del _copies[key]

  _copies[key] = (weakref.ref(table, forget), w_DV)
  while len(_copies) > MAX_TABLES:
    del _copies[next(iter(_copies))]
  return w_DV
