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
* the loop itself (cadences, saving, metrics, export) is ``loop.run``,
  shared with ``rl_trainer``; this module builds the models, the data and
  the step callback of the method (``w2s_jax.methods``);
* resume restores params, optimizer, step and the data iterator exactly,
  after ``workdir.check_resume`` checked the config against the one the
  checkpoint was trained with; a finished workdir is left untouched.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from w2s_jax import config_lib, methods, sharding
from w2s_jax.models import config as model_config
from w2s_jax.models import hf_io, transformer
from w2s_jax.training import (
    checkpoint,
    inputs,
    loop,
    lora,
    optim,
    pairing,
    steps,
)
from w2s_jax.training import workdir as workdir_lib

log = logging.getLogger(__name__)


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
  """[B, ...] rows on the data axes (those that divide), process-major."""
  shape = (local_shape[0] * jax.process_count(), *local_shape[1:])
  names = ("batch",) + (None,) * (len(shape) - 1)
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
  config_lib.validate(config)
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
  tcfg = config.train
  method = methods.get(str(config.method), job="train")
  hp = method.hp(config.loss)
  mesh = sharding.make_mesh(tuple(config.get("mesh_shape", (-1, 1, 1))))

  # Models are built (and sharded on arrival) before the mesh becomes the
  # ambient one: abstract HF loading resolves logical axes itself.
  tokenizer = inputs.load_tokenizer(config.data.tokenizer, workdir)
  if "teacher" in method.frozen:
    pairing.check_tokenizers(config, tokenizer, ("teacher",), workdir)
  student = build_model(config.student, tokenizer, mesh)
  frozen_models = {}
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
    if vocab:  # padded widths: logits sliced to the shared tokenizer
      hp = hp.replace(vocab_size=vocab)
  elif method.data == "topk":
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
    micro = int(tcfg.micro_batches)
    # Every process builds the global batch and keeps its rows, laid out so
    # that P processes see exactly the micro-batches of one (inputs).
    batches = inputs.make_batches(
        config.method,
        config.data,
        tokenizer,
        int(tcfg.batch_size),
        int(config.seed),
        micro_batches=micro,
    )
    saved = loop.Saved(batches, "data")
    train_state, start = loop.restore(ckpt, train_state, saved)
    config_lib.save_resolved(config, workdir)

    if method.data == "topk":
      hp = hp.for_cache(batches.reader.header)
    spec = steps.StepSpec(
        method=method,
        student_graphdef=s_graphdef,
        frozen_graphdefs=frozen_graphdefs,
        tx=tx,
        loss_cfg=hp,
        lora_rank=rank,
        lora_alpha=float(config.get("lora", {}).get("alpha", 16.0)),
        schedule=schedule,
    )
    # The one micro-batching convention (steps.flat_step): the flat batch of
    # each process's rows, split inside the jit.
    blocks = jax.process_count()
    step_fn = jax.jit(
        steps.flat_step(steps.make_train_step(spec), micro, blocks),
        donate_argnums=(0,),
    )
    first = [_to_device(next(batches), mesh)]
    compiled = step_fn.lower(train_state, frozen, first[0]).compile()
    mem = compiled.memory_analysis()
    if mem is not None:
      log.info(
          "train step: temp %.1f MiB, arguments %.1f MiB",
          getattr(mem, "temp_size_in_bytes", 0) / 2**20,
          getattr(mem, "argument_size_in_bytes", 0) / 2**20,
      )

    def one_step(train_state, step):
      del step
      batch = first.pop() if first else _to_device(next(batches), mesh)
      return compiled(train_state, frozen, batch)

    run = loop.Run(
        config,
        workdir,
        ckpt,
        saved,
        hint="lower optim.lr or check the data for empty/garbled rows",
        model_fn=lambda ts: _student(spec, s_graphdef, ts, frozen),
        eval_fn=eval_fn,
    )
    _, last, _ = loop.run(run, one_step, train_state, start)
  return last


def _student(spec, graphdef, train_state, frozen) -> transformer.Transformer:
  return nnx.merge(
      graphdef, steps.student_state(spec, train_state["params"], frozen)
  )
