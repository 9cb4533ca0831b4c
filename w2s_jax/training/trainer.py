"""The host training loop: ``train_and_evaluate(config, workdir)``.

Only the jitted step touches the device. The loop schedules, logs and saves:

* the step is compiled once, ahead of time, with shardings and with the
  train state donated; its ``memory_analysis()`` is logged;
* step n+1 is dispatched before step n's metrics are read (except on steps
  that save, which must read them first: the state is donated);
* a non-finite loss or parameter norm stops the run (``loop.NonFinite``,
  exit 3) and leaves the last good checkpoint in place (the bad state is
  never saved);
* SIGTERM / SIGINT save a checkpoint and raise ``loop.Stopped`` (exit
  143 / 130);
* resume restores params, optimizer, step and the data iterator exactly,
  after ``workdir.check_resume`` checked the config against the one the
  checkpoint was trained with; a finished workdir is left untouched.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from w2s_jax import config_lib, sharding
from w2s_jax.models import config as model_config
from w2s_jax.models import hf_io, transformer
from w2s_jax.training import (
    checkpoint,
    inputs,
    loop,
    lora,
    metrics,
    optim,
    pairing,
    steps,
)
from w2s_jax.training import workdir as workdir_lib

log = logging.getLogger(__name__)


# Method-specific range checks, run with config_lib's at job start.
_METHOD_CHECKS = {
    "ssb": [
        ("loss.lambda_kd", lambda x: float(x) >= 0, ">= 0"),
        ("loss.lambda_ce", lambda x: float(x) >= 0, ">= 0"),
    ],
}
_TOPK_MODE = (
    "loss.topk_mode",
    lambda x: x in ("tail_bucket", "renormalized", "sparse_fkl"),
    "'tail_bucket', 'renormalized' or 'sparse_fkl'",
)
_METHOD_CHECKS["ssb"].append(_TOPK_MODE)
_METHOD_CHECKS["distill_cache"] = [_TOPK_MODE]


def build_model(
    mcfg: Any, tokenizer=None, mesh=None
) -> transformer.Transformer:
  """A model from a config section: ``hf_path`` or a ``preset`` (+ overrides)."""
  overrides = dict(mcfg.get("overrides") or {})
  if mcfg.get("hf_path"):
    # Only run-time fields apply to a checkpoint; its architecture is fixed.
    runtime = {
        k: overrides[k]
        for k in (
            "remat",
            "max_len",
            "attention",
            "matmul_precision",
            "scan_layers",
        )
        if overrides.get(k)
    }
    return hf_io.load_pretrained(
        mcfg.hf_path, dtype=mcfg.get("dtype") or None, mesh=mesh, **runtime
    )
  if tokenizer is not None and not overrides.get("vocab_size"):
    overrides["vocab_size"] = tokenizer.vocab_size
  overrides = {k: v for k, v in overrides.items() if v not in (None, 0, "")}
  if mcfg.get("dtype"):
    overrides.setdefault("param_dtype", mcfg.dtype)
    overrides.setdefault("dtype", mcfg.dtype)
  cfg = model_config.get_config(mcfg.preset, **overrides)
  return transformer.init_model(cfg, seed=int(mcfg.get("seed", 0)), mesh=mesh)


def _batch_sharding(mesh, local_shape: tuple[int, ...]) -> NamedSharding:
  """[M, b, ...] micro-batches: rows on the data axes (those that divide)."""
  shape = (
      local_shape[0],
      local_shape[1] * jax.process_count(),
      *local_shape[2:],
  )
  names = (None, "batch") + (None,) * (len(shape) - 2)
  return NamedSharding(mesh, sharding.logical_to_spec(names, shape, mesh))


def _to_device(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  return {
      k: jax.make_array_from_process_local_data(
          _batch_sharding(mesh, v.shape), v
      )
      for k, v in batch.items()
  }


def train_and_evaluate(
    config: Any, workdir: str, eval_fn=None
) -> dict[str, Any]:
  """Runs (or resumes) one training job; returns the final host metrics.

  Args:
    config: the locked ConfigDict (see configs/).
    workdir: checkpoints, metrics.jsonl, tb/, export/ and config.json go here.
    eval_fn: optional ``(model, step) -> dict`` run every
      ``train.eval_every`` steps and at the end.
  """
  config_lib.validate(config, _METHOD_CHECKS.get(str(config.method), ()))
  os.makedirs(workdir, exist_ok=True)
  tcfg = config.train
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      save_every=int(tcfg.save_every),
      keep=int(tcfg.keep),
  )
  resume = workdir_lib.check_resume(config, workdir, ckpt)
  if resume.finished:
    ckpt.close()
    print(workdir_lib.finished_message(workdir, resume.step))
    return {}
  try:
    return _train(config, workdir, ckpt, eval_fn)
  finally:
    ckpt.close()


def _train(config, workdir, ckpt, eval_fn) -> dict[str, Any]:
  """``train_and_evaluate`` once the workdir is checked."""
  tcfg, lcfg = config.train, config.loss
  method = steps.get_method(config.method)
  mesh = sharding.make_mesh(tuple(config.get("mesh_shape", (-1, 1, 1))))

  # Models are built (and sharded on arrival) before the mesh becomes the
  # ambient one: abstract HF loading resolves logical axes itself.
  tokenizer = inputs.load_tokenizer(config.data.tokenizer, workdir)
  if "teacher" in method.frozen:
    pairing.check_tokenizers(config, tokenizer, ("teacher",), workdir)
  student = build_model(config.student, tokenizer, mesh)
  frozen_models = {}
  vocab = None
  if "teacher" in method.frozen:
    frozen_models["teacher"] = build_model(config.teacher, tokenizer, mesh)
    vocab = pairing.shared_vocab(
        config,
        tokenizer,
        {
            "student": student.cfg.vocab_size,
            "teacher": frozen_models["teacher"].cfg.vocab_size,
        },
    )
  elif config.method in steps.CACHE_METHODS:
    # The teacher is the cache (its tokenizer fingerprint is checked against
    # data.tokenizer on open); the student must cover the tokenizer too.
    pairing.shared_vocab(config, tokenizer, {"student": student.cfg.vocab_size})
  if "ref" in method.frozen:
    frozen_models["ref"] = build_model(config.student, tokenizer, mesh)

  with jax.set_mesh(mesh):
    s_graphdef, s_state = nnx.split(student)
    frozen, frozen_graphdefs = {}, {}
    for name, m in frozen_models.items():
      frozen_graphdefs[name], frozen[name] = nnx.split(m)
    rank = int(config.get("lora", {}).get("rank", 0))
    if rank:
      frozen["base"] = s_state
      trainable = lora.init_lora(
          s_state,
          rank,
          jax.random.key(int(config.seed) + 1),
          tuple(config.lora.get("targets", lora.DEFAULT_TARGETS)),
      )
    else:
      trainable = s_state

    total = int(tcfg.steps)
    tx, schedule = optim.from_config(config.optim, max(total, 1))
    train_state = {
        "params": trainable,
        "opt": tx.init(trainable),
        "step": jnp.zeros((), jnp.int32),
    }
    global_batch = int(tcfg.batch_size)
    micro = int(tcfg.micro_batches)
    # Every process builds the global batch and keeps its rows, laid out so
    # that P processes see exactly the micro-batches of one (inputs).
    batches = inputs.make_batches(
        config.method,
        config.data,
        tokenizer,
        global_batch,
        int(config.seed),
        micro_batches=micro,
    )
    start = 0
    if ckpt.latest_step() is not None:
      train_state, meta, start = ckpt.restore(train_state)
      batches.set_state(_decode_state(meta["data"]))
      log.info("resumed from step %d", start)
    config_lib.save_resolved(config, workdir)

    loss_cfg = dict(lcfg.to_dict())
    if vocab:  # padded widths: logits sliced to the shared tokenizer
      loss_cfg["vocab_size"] = vocab
    if config.method in steps.CACHE_METHODS:
      loss_cfg.update(_cache_loss_cfg(batches.reader.header, loss_cfg))
    spec = steps.StepSpec(
        method=method,
        student_graphdef=s_graphdef,
        frozen_graphdefs=frozen_graphdefs,
        tx=tx,
        loss_cfg=loss_cfg,
        lora_rank=rank,
        lora_alpha=float(config.get("lora", {}).get("alpha", 16.0)),
        schedule=schedule,
    )
    first = _to_device(inputs.split_micro(next(batches), micro), mesh)
    step_fn = jax.jit(steps.make_train_step(spec), donate_argnums=(0,))
    compiled = step_fn.lower(train_state, frozen, first).compile()
    mem = compiled.memory_analysis()
    if mem is not None:
      log.info(
          "train step: temp %.1f MiB, arguments %.1f MiB",
          getattr(mem, "temp_size_in_bytes", 0) / 2**20,
          getattr(mem, "argument_size_in_bytes", 0) / 2**20,
      )

    writer = metrics.MetricWriter(
        workdir,
        tensorboard=bool(tcfg.get("tensorboard", True)),
        start_step=start,
    )
    ident = {"config": workdir_lib.config_dict(config)}
    log_every = int(tcfg.get("log_every", 10))
    eval_every = int(tcfg.get("eval_every", 0))
    last: dict[str, float] = {}
    pending = None
    batch = first

    def check(step_metrics, step):
      host = metrics.to_host(step_metrics)
      loop.check_finite(
          host,
          step,
          ckpt,
          "lower optim.lr or check the data for empty/garbled rows",
      )
      return host

    try:
      with loop.StopSignals() as signals:
        bar = loop.progress(start, total, str(config.method))
        for step in bar:
          if step > start or batch is None:
            batch = _to_device(inputs.split_micro(next(batches), micro), mesh)
          train_state, step_metrics = compiled(train_state, frozen, batch)
          batch = None
          if pending is not None:
            host = check(*pending)
            if pending[1] % log_every == 0:
              writer.write(pending[1], host)
            last = host
          pending = (step_metrics, step + 1)
          done = step + 1
          stopping = signals.received is not None
          if done % ckpt.save_every == 0 or done == total or stopping:
            host = check(*pending)
            writer.write(done, host)
            last, pending = host, None
            ckpt.save(
                done,
                train_state,
                {"data": _encode_state(batches.get_state()), **ident},
                force=True,
            )
            bar.set_postfix(loss=f"{host['train/loss']:.4f}")
          if eval_fn is not None and eval_every and done % eval_every == 0:
            model = _student(spec, s_graphdef, train_state, frozen)
            writer.write(done, eval_fn(model, done))
          loop.stop_if_signalled(signals, done, ckpt)
          loop.debug_kill(tcfg, done, ckpt)
        if pending is not None:
          last = check(*pending)
          writer.write(pending[1], last)
      ckpt.wait()
      final_step = int(jax.device_get(train_state["step"]))
      model = _student(spec, s_graphdef, train_state, frozen)
      if eval_fn is not None and final_step == total:
        result = eval_fn(model, final_step)
        writer.write(final_step, result)
        last.update(result)
    finally:
      writer.close()
    if final_step == total and tcfg.get("export", True):
      export_model(model, os.path.join(workdir, "export"))
  return last


def export_model(model: transformer.Transformer, path: str) -> None:
  """Writes ``model`` as an HF checkpoint; every process must call it.

  With several processes the parameters are sharded across hosts, so they
  are first gathered (a collective) and process 0 alone writes.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    graphdef, state = nnx.split(model)
    model = nnx.merge(
        graphdef, multihost_utils.process_allgather(state, tiled=True)
    )
  if jax.process_index() == 0:
    hf_io.save_pretrained(model, path)


def _cache_loss_cfg(header: Any, loss_cfg: dict[str, Any]) -> dict[str, Any]:
  """The cache's recording temperature, checked against the loss's.

  Raises:
    ValueError: a tail_bucket / sparse_fkl loss at a temperature other than
      the cache's (the tail mass at another temperature is unknown).
  """
  mode = str(loss_cfg.get("topk_mode", "tail_bucket"))
  tau = float(loss_cfg.get("temperature", 1.0))
  if mode != "renormalized" and abs(tau - header.temperature) > 1e-6 * tau:
    raise ValueError(
        f"loss.temperature={tau} but the top-k cache was recorded at"
        f" {header.temperature}; with loss.topk_mode={mode!r} they must match."
        f" Set --config.loss.temperature={header.temperature}, rebuild the"
        " cache at the loss temperature, or use"
        " --config.loss.topk_mode=renormalized."
    )
  return {"teacher_temperature": float(header.temperature)}


def _student(spec, graphdef, train_state, frozen) -> transformer.Transformer:
  return nnx.merge(
      graphdef, steps.student_state(spec, train_state["params"], frozen)
  )


def _encode_state(state: Any) -> Any:
  """Iterator states may hold bytes: store them JSON-safe."""
  if isinstance(state, bytes):
    return {"__bytes__": state.decode("latin-1")}
  return json.loads(json.dumps(state, default=str))


def _decode_state(state: Any) -> Any:
  if isinstance(state, dict) and "__bytes__" in state:
    return state["__bytes__"].encode("latin-1")
  return state
