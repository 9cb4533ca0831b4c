"""Teacher top-k cache: offline teacher log-probs in one array_record file.

Offline distillation (docs/methods.md, "Divergences" "Teacher top-k", docs/methods.md, "GKD and offline KD" offline KD, docs/methods.md, "SSB" SSB)
scores every training sequence with the frozen teacher once and keeps, per
position, the k most likely next tokens and their log-probs. This module
stores those in ArrayRecord (random access by index, works without
TensorFlow, readable from grain workers).

File layout (every record is a msgpack map with string keys):

* record 0, the header: ``format`` ("w2s_jax.topk_cache"), ``version`` (1),
  ``k``, ``temperature``, ``vocab_size``, ``tokenizer_fingerprint`` and
  ``logprob_dtype`` ("float32" or "float16").
* records 1..N, one per example: ``length`` L, ``prompt_length``,
  ``temperature``, and raw little-endian C-order bytes of ``token_ids``
  (int32 [L]), ``topk_ids`` (int32 [L, K]) and ``topk_logprobs``
  ([L, K] in ``logprob_dtype``).

msgpack of raw bytes was chosen over ``.npz`` because it is a few bytes of
framing per array instead of a zip archive per record, and it never needs
pickle.

Alignment: row t describes the teacher's next-token distribution after
``token_ids[: t + 1]``, i.e. the same row as ``logits[:, t]`` (docs/methods.md, "Notation"), so
``topk_logprobs[t]`` scores candidates for ``token_ids[t + 1]``. The
log-probs are of ``softmax(z_T / temperature)``; engines' log-probs depend on
the temperature, which is why it is stored and checked.

Writes are atomic: the file is built under a temporary name in the target
directory, fsynced and renamed over the target only on a clean close, so an
interrupted scoring run never leaves a truncated cache behind.

Shape legend: L length, K top-k width, V vocab.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable, Literal, Sequence

import msgpack
import numpy as np
from array_record.python import array_record_module

from w2s_jax.data import traces

FORMAT = "w2s_jax.topk_cache"
VERSION = 1
LogprobDtype = Literal["float32", "float16"]
PathLike = str | os.PathLike[str]

_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
# One record per chunk: random access decodes only the record it needs.
_WRITER_OPTIONS = "group_size:1"
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
# Slack for log-probs rounded to the storage dtype (a top-1 log-prob of -1e-8
# can round up to a tiny positive value in float16).
_TOL = {"float32": 1e-4, "float16": 1e-2}


@dataclasses.dataclass(frozen=True)
class TopKHeader:
  """Cache-wide metadata.

  Attributes:
    k: Top-k width K.
    temperature: Teacher temperature the log-probs were computed at.
    vocab_size: Teacher vocabulary size; every id is in [0, vocab_size).
    tokenizer_fingerprint: Identifies the tokenizer, so a cache is never
      used with another one (e.g. a hash of its vocab).
    logprob_dtype: "float32" or "float16" storage of the log-probs (always
      returned as float32).
  """

  k: int
  temperature: float
  vocab_size: int
  tokenizer_fingerprint: str
  logprob_dtype: LogprobDtype = "float32"

  def __post_init__(self):
    if not isinstance(self.k, int) or self.k < 1:
      raise ValueError(f"k must be a positive int, got {self.k!r}.")
    if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
      raise ValueError(
          f"vocab_size must be a positive int, got {self.vocab_size!r}."
      )
    if self.k > self.vocab_size:
      raise ValueError(
          f"k={self.k} exceeds vocab_size={self.vocab_size}; use k <="
          " vocab_size."
      )
    t = self.temperature
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
      raise ValueError(
          f"temperature must be a finite number > 0, got {t!r}; use 1.0 for"
          " the teacher's raw distribution."
      )
    if not isinstance(self.tokenizer_fingerprint, str):
      raise ValueError("tokenizer_fingerprint must be a string.")
    if self.logprob_dtype not in _DTYPES:
      raise ValueError(
          "logprob_dtype must be 'float32' or 'float16', got"
          f" {self.logprob_dtype!r}."
      )


@dataclasses.dataclass(frozen=True)
class TopKExample:
  """One cached sequence.

  Attributes:
    token_ids: [L] int32 token ids of prompt and completion.
    topk_ids: [L, K] int32 teacher top-k ids; row t predicts token t + 1.
    topk_logprobs: [L, K] float32 teacher log-probs at ``temperature``.
    temperature: Teacher temperature (equals the header's).
    prompt_length: Number of leading prompt tokens in ``token_ids``.
  """

  token_ids: np.ndarray
  topk_ids: np.ndarray
  topk_logprobs: np.ndarray
  temperature: float
  prompt_length: int = 0


def _as_int_array(x: Any, name: str, ndim: int, where: str) -> np.ndarray:
  arr = np.asarray(x)
  if arr.ndim != ndim or not (
      np.issubdtype(arr.dtype, np.integer) or arr.size == 0
  ):
    raise ValueError(
        f"{where}: {name} must be a {ndim}-D integer array, got dtype"
        f" {arr.dtype} and shape {arr.shape}."
    )
  return arr


class TopKCacheWriter:
  """Writes a top-k cache atomically; use as a context manager.

  Example::

    header = TopKHeader(k=8, temperature=1.0, vocab_size=V,
                        tokenizer_fingerprint=fp)
    with TopKCacheWriter(path, header) as w:
      for ids_L, top_ids_LK, top_lp_LK in scored:
        w.write(ids_L, top_ids_LK, top_lp_LK, prompt_length=p)

  The target file appears (or is replaced) only when the ``with`` block exits
  without an exception; on an exception the partial file is deleted.
  """

  def __init__(self, path: PathLike, header: TopKHeader):
    """Opens a temporary file next to ``path``.

    Args:
      path: Destination ``.array_record`` file; its directory must exist.
      header: Cache-wide metadata.

    Raises:
      FileNotFoundError: If the destination directory does not exist.
    """
    if not isinstance(header, TopKHeader):
      raise ValueError(
          f"header must be a TopKHeader, got {type(header).__name__}."
      )
    self.path = os.fspath(path)
    self.header = header
    self.num_written = 0
    self._tmp = traces.temp_path_for(self.path)
    self._writer = array_record_module.ArrayRecordWriter(
        self._tmp, _WRITER_OPTIONS
    )
    self._writer.write(
        msgpack.packb({
            "format": FORMAT,
            "version": VERSION,
            **dataclasses.asdict(header),
        })
    )

  def write(
      self,
      token_ids_L: Any,
      topk_ids_LK: Any,
      topk_logprobs_LK: Any,
      *,
      prompt_length: int = 0,
      temperature: float | None = None,
  ) -> None:
    """Validates and appends one example.

    Args:
      token_ids_L: [L] token ids, L >= 1.
      topk_ids_LK: [L, K] distinct teacher top-k ids per row.
      topk_logprobs_LK: [L, K] teacher log-probs at the header temperature
        (<= 0, NaN-free, per-row probability mass <= 1).
      prompt_length: Number of leading prompt tokens, in [0, L].
      temperature: If given, must equal the header's (a guard against mixing
        runs scored at different temperatures).

    Raises:
      ValueError: On any shape, range or value problem, naming the example.
    """
    if self._writer is None:
      raise ValueError(f"writer for {self.path!r} is already closed.")
    h = self.header
    where = f"{self.path}: example {self.num_written}"
    ids = _as_int_array(token_ids_L, "token_ids", 1, where)
    top = _as_int_array(topk_ids_LK, "topk_ids", 2, where)
    lp = np.asarray(topk_logprobs_LK, dtype=np.float32)
    length = ids.shape[0]
    if length < 1:
      raise ValueError(f"{where}: token_ids is empty.")
    if top.shape != (length, h.k) or lp.shape != (length, h.k):
      raise ValueError(
          f"{where}: topk_ids {top.shape} and topk_logprobs {lp.shape} must"
          f" both be [L, K] = {(length, h.k)} (header k={h.k})."
      )
    for name, arr in (("token_ids", ids), ("topk_ids", top)):
      if arr.min() < 0 or arr.max() >= h.vocab_size:
        raise ValueError(
            f"{where}: {name} has values outside [0, {h.vocab_size}) (min"
            f" {arr.min()}, max {arr.max()}); check the tokenizer and"
            " vocab_size."
        )
    sorted_top = np.sort(top, axis=-1)
    if np.any(sorted_top[:, 1:] == sorted_top[:, :-1]):
      raise ValueError(f"{where}: topk_ids repeats an id within a row.")
    tol = _TOL[h.logprob_dtype]
    if np.isnan(lp).any() or (lp > tol).any():
      raise ValueError(
          f"{where}: topk_logprobs must be log-probabilities (<= 0, no NaN);"
          f" got max {np.nanmax(lp):.4g}. Pass log_softmax(z / T), not"
          " logits."
      )
    mass = np.exp(lp.astype(np.float64)).sum(-1)
    if (mass > 1 + tol).any():
      raise ValueError(
          f"{where}: top-k probability mass {mass.max():.4g} exceeds 1; the"
          " log-probs are not normalised over the full vocabulary."
      )
    if not isinstance(prompt_length, (int, np.integer)) or not (
        0 <= prompt_length <= length
    ):
      raise ValueError(
          f"{where}: prompt_length must be an int in [0, {length}], got"
          f" {prompt_length!r}."
      )
    if temperature is not None and not math.isclose(
        temperature, h.temperature, rel_tol=1e-6
    ):
      raise ValueError(
          f"{where}: temperature {temperature} differs from the header's"
          f" {h.temperature}; write one cache per teacher temperature."
      )
    record = {
        "length": int(length),
        "prompt_length": int(prompt_length),
        "temperature": float(h.temperature),
        "token_ids": ids.astype("<i4").tobytes(),
        "topk_ids": top.astype("<i4").tobytes(),
        "topk_logprobs": lp.astype(_DTYPES[h.logprob_dtype]).tobytes(),
    }
    self._writer.write(msgpack.packb(record))
    self.num_written += 1

  def close(self) -> None:
    """Finishes the file and renames it over the target."""
    if self._writer is None:
      return
    writer, self._writer = self._writer, None
    healthy = writer.ok()  # ok() reads False once closed, so ask first.
    try:
      writer.close()
    except RuntimeError as e:
      healthy, error = False, e
    else:
      error = None
    if not healthy:
      os.remove(self._tmp)
      raise OSError(f"array_record writer failed for {self.path!r}.") from error
    traces.commit_temp_file(self._tmp, self.path)

  def abort(self) -> None:
    """Discards everything written; the target file is left untouched."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  def __enter__(self) -> TopKCacheWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_topk_cache(
    path: PathLike, header: TopKHeader, examples: Iterable[TopKExample]
) -> int:
  """Writes ``examples`` to a new cache atomically.

  Args:
    path: Destination file.
    header: Cache-wide metadata.
    examples: The examples, in index order.

  Returns:
    The number of examples written.
  """
  with TopKCacheWriter(path, header) as writer:
    for ex in examples:
      writer.write(
          ex.token_ids,
          ex.topk_ids,
          ex.topk_logprobs,
          prompt_length=ex.prompt_length,
          temperature=ex.temperature,
      )
  return writer.num_written


class TopKCacheReader:
  """Random-access reader; a grain data source (``len`` and ``[i]``).

  Construction validates the header against the caller's expectations, so a
  cache built with another k, temperature, vocabulary or tokenizer fails
  loudly before training starts. Every record read is checked against the
  header. Picklable (reopens the file), so it can feed grain workers.
  """

  def __init__(
      self,
      path: PathLike,
      *,
      expected_k: int | None = None,
      expected_temperature: float | None = None,
      expected_vocab_size: int | None = None,
      expected_tokenizer_fingerprint: str | None = None,
  ):
    """Opens ``path`` and checks its header.

    Args:
      path: A file written by :class:`TopKCacheWriter`.
      expected_k: If given, the header's k must match.
      expected_temperature: If given, the header's temperature must match.
      expected_vocab_size: If given, the header's vocab size must match.
      expected_tokenizer_fingerprint: If given, must match the header's.

    Raises:
      FileNotFoundError: If ``path`` does not exist.
      ValueError: If the file is not a valid cache or an expectation fails.
    """
    self.path = os.fspath(path)
    self._expected = dict(
        k=expected_k,
        temperature=expected_temperature,
        vocab_size=expected_vocab_size,
        tokenizer_fingerprint=expected_tokenizer_fingerprint,
    )
    self._open()

  def _open(self) -> None:
    if not os.path.isfile(self.path):
      raise FileNotFoundError(
          f"top-k cache {self.path!r} does not exist; build it with"
          " TopKCacheWriter."
      )
    self._reader = array_record_module.ArrayRecordReader(
        self.path, _READER_OPTIONS
    )
    if not self._reader.ok() or self._reader.num_records() < 1:
      raise ValueError(
          f"{self.path!r} is not a top-k cache (not an array_record file, or"
          " empty/truncated); rebuild it with TopKCacheWriter."
      )
    self._len = self._reader.num_records() - 1
    self.header = self._parse_header(self._reader.read([0])[0])

  def _parse_header(self, raw: bytes) -> TopKHeader:
    try:
      meta = msgpack.unpackb(raw)
    except Exception as e:  # msgpack raises several unrelated types.
      raise ValueError(f"{self.path}: unreadable header record ({e}).") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise ValueError(
          f"{self.path}: header record is not a {FORMAT!r} header; this"
          " array_record file holds something else."
      )
    if meta.get("version") != VERSION:
      raise ValueError(
          f"{self.path}: cache version {meta.get('version')!r} is not"
          f" supported (expected {VERSION}); rebuild the cache."
      )
    fields = {f.name for f in dataclasses.fields(TopKHeader)}
    try:
      header = TopKHeader(**{k: meta[k] for k in fields})
    except (KeyError, ValueError) as e:
      raise ValueError(f"{self.path}: invalid header ({e}).") from e
    for name, want in self._expected.items():
      if want is None:
        continue
      got = getattr(header, name)
      same = (
          math.isclose(got, want, rel_tol=1e-6)
          if name == "temperature"
          else got == want
      )
      if not same:
        raise ValueError(
            f"{self.path}: cache has {name}={got!r} but {want!r} was expected;"
            f" rebuild the cache or set {name}={got!r} in the config."
        )
    return header

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> TopKExample:
    """Returns example ``index`` (negative indices count from the end)."""
    index = self._check_index(index)
    return self._decode(self._reader.read([index + 1])[0], index)

  def read_many(self, indices: Sequence[int]) -> list[TopKExample]:
    """Reads several examples in one call (in the given order)."""
    checked = [self._check_index(i) for i in indices]
    raws = self._reader.read([i + 1 for i in checked])
    return [self._decode(r, i) for r, i in zip(raws, checked)]

  def _check_index(self, index: int) -> int:
    if not isinstance(index, (int, np.integer)):
      raise TypeError(f"index must be an int, got {type(index).__name__}.")
    n = self._len
    if not -n <= index < n:
      raise IndexError(
          f"index {index} out of range for {self.path!r} with {n} examples."
      )
    return int(index) % n

  def _decode(self, raw: bytes, index: int) -> TopKExample:
    h = self.header
    where = f"{self.path}: example {index}"
    try:
      rec = msgpack.unpackb(raw)
      length, k = int(rec["length"]), h.k
      ids = np.frombuffer(rec["token_ids"], dtype="<i4")
      top = np.frombuffer(rec["topk_ids"], dtype="<i4")
      lp = np.frombuffer(rec["topk_logprobs"], dtype=_DTYPES[h.logprob_dtype])
      temperature, prompt_length = rec["temperature"], rec["prompt_length"]
    except Exception as e:  # A corrupt record can fail in many ways.
      raise ValueError(f"{where}: corrupt record ({e!r}).") from e
    if ids.size != length or top.size != length * k or lp.size != length * k:
      raise ValueError(
          f"{where}: sizes {ids.size}, {top.size}, {lp.size} do not match L ="
          f" {length} and header k = {k}; the cache is inconsistent."
      )
    if not math.isclose(temperature, h.temperature, rel_tol=1e-6):
      raise ValueError(
          f"{where}: temperature {temperature} differs from the header's"
          f" {h.temperature}."
      )
    if not 0 <= prompt_length <= length:
      raise ValueError(f"{where}: prompt_length {prompt_length} not in [0, L].")
    if length and (top.min() < 0 or top.max() >= h.vocab_size):
      raise ValueError(f"{where}: topk_ids outside [0, {h.vocab_size}).")
    return TopKExample(
        token_ids=ids.astype(np.int32),
        topk_ids=top.reshape(length, k).astype(np.int32),
        topk_logprobs=lp.reshape(length, k).astype(np.float32),
        temperature=float(temperature),
        prompt_length=int(prompt_length),
    )

  def close(self) -> None:
    self._reader.close()

  def __enter__(self) -> TopKCacheReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getstate__(self) -> dict[str, Any]:
    return {"path": self.path, "_expected": self._expected}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._open()

  def __repr__(self) -> str:
    return f"TopKCacheReader({self.path!r}, n={self._len}, {self.header})"
