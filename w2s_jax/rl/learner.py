"""The RL host loop: ``train_and_evaluate(config, workdir)`` for job 'rl'.

Per step: rollouts on the current student (``rollouts.Roller``; prompts from
``rl.problems``, graded in ``rl.graders`` worker processes with a deadline
per completion unless ``rl.reward_workers=0``), one jitted
scoring call (student π_old, reference and teacher log-probs of the sampled
tokens, ``scoring.make_score_fn``), then ``rl.updates_per_rollout`` clipped
updates through ``steps.make_train_step`` with π_old fixed. GKD skips the
scoring: its update fuses the teacher (JSD on full distributions).

Models: the student (``student.hf_path`` or a preset) is the only state that
is trained, donated and checkpointed; the teacher (KDRL, GKD) and the
reference (a frozen copy of the initial student, built again from
``config.student`` so that a resumed run gets the same one, only when
β_ref > 0) are never written.

The host loop is ``loop.run``, shared with ``trainer``, driven by
``_Loop.one_step``: AOT-compiled update with donation, Checkpointer (params
+ optimizer + step + PRNG key + prompt iterator; resume is exact),
MetricWriter (rewards, accuracy, lengths, clip fraction, KD term, wall time
per phase and the host share), tqdm, the NaN stop, the SIGTERM / SIGINT
save and the export of the final student to ``workdir/export``; the
workdir identity check is ``training.workdir``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2s_jax import config_lib, methods, sharding
from w2s_jax.rl import graders, multiprocess, rollouts, scoring
from w2s_jax.rl import problems as rl_problems
from w2s_jax.training import (
    checkpoint,
    inputs,
    loop,
    lora,
    metrics,
    optim,
    pairing,
    steps,
    trainer,
)
from w2s_jax.training import workdir as workdir_lib

log = logging.getLogger(__name__)


def rollout_config(config: Any) -> rollouts.RolloutConfig:
  """``config.rl`` (+ data.style, seed) as a ``RolloutConfig``."""
  rl = config.rl
  spec = methods.get(str(config.method), job="rl")
  fields = {f for f in rollouts.RolloutConfig.__dataclass_fields__}
  kw = {k: rl[k] for k in rl.keys() if k in fields}
  kw["style"] = str(config.data.get("style", "terse"))
  kw["seed"] = int(config.seed)
  kw["ampo"] = spec.rollouts == "guided"
  kw["sample_dtype"] = str(rl.get("sample_dtype", "") or "")
  # π_sample must be the sampler's log-prob at the temperature the losses
  # score with: raw (T 1) or the sampled distribution (T, no top-p); other
  # settings record none (no mismatch metric; TIS refused in _check_config).
  tau = float(spec.hp(config.loss).pg_temperature)
  same = tau == float(rl.temperature) and float(rl.top_p) == 1.0
  kw["sampler_logprobs"] = "raw" if tau == 1.0 else "sampling" if same else ""
  return rollouts.RolloutConfig(**kw)


# Hyperparameters whose 0 means "this fact of the run" (when the method has
# them): L_max = the generation budget, G = the group size.
_RUN_FACTS = {"max_len": "max_new_tokens", "group_size": "group_size"}


def loss_config(config: Any, spec: methods.MethodSpec) -> methods.Hparams:
  """The method's checked hyperparameters, with the RL facts filled in."""
  hp = spec.hp(config.loss)
  fill = {}
  for key, rl_key in _RUN_FACTS.items():
    if key in hp.keys():
      run = int(config.rl[rl_key])
      if getattr(hp, key) and getattr(hp, key) != run and key == "group_size":
        raise ValueError(
            f"config value loss.group_size={hp.group_size} differs from"
            f" rl.group_size={run}; set --config.loss.group_size=0 (= G)."
        )
      fill[key] = getattr(hp, key) or run
  return hp.replace(**fill)


SAMPLE_DTYPES = ("", "float32", "bfloat16", "float16")


def _check_config(config: Any) -> None:
  """Cross-key checks of an RL job, before anything is built or written."""
  rl = config.rl
  spec = methods.get(str(config.method), job="rl")
  hp = loss_config(config, spec)
  cap = float(rl.get("tis_cap", 0.0) or 0.0)
  if cap and cap <= 1.0:
    raise ValueError(
        f"config value rl.tis_cap={cap} is invalid: the cap C of"
        " min(pi_train/pi_sample, C) must be > 1 (0 = off); fix it with"
        " --config.rl.tis_cap=2.0"
    )
  dt = str(rl.get("sample_dtype", "") or "")
  if dt not in SAMPLE_DTYPES:
    raise ValueError(
        f"config value rl.sample_dtype={dt!r} is invalid: it must be one of"
        f" {SAMPLE_DTYPES} ('' = the policy's own weights); fix it with"
        " --config.rl.sample_dtype=bfloat16"
    )
  if cap and not spec.policy_gradient:
    raise ValueError(
        "rl.tis_cap weights a policy-gradient loss; method"
        f" {config.method!r} has none. Set --config.rl.tis_cap=0."
    )
  tau = float(hp.pg_temperature)
  if cap and tau != 1.0:
    if tau != float(rl.temperature) or float(rl.top_p) != 1.0:
      raise ValueError(
          "rl.tis_cap needs the sampler's log-probs at loss.pg_temperature="
          f"{tau}: the sampler records them at temperature 1 or at"
          f" rl.temperature={rl.temperature} with rl.top_p=1 (got"
          f" {rl.top_p}); set --config.loss.pg_temperature to one of those."
      )
  lora_cfg = config.get("lora", {})
  if int(lora_cfg.get("rank", 0)):
    if float(lora_cfg.get("alpha", 16.0)) <= 0:
      raise ValueError(
          f"config value lora.alpha={lora_cfg.alpha} is invalid: it must be"
          " > 0; fix it with --config.lora.alpha=16"
      )
    bad = set(lora_cfg.get("targets", ())) - set(lora.TARGETS)
    if bad or not lora_cfg.get("targets", ()):
      raise ValueError(
          f"config value lora.targets={tuple(lora_cfg.get('targets', ()))} is"
          f" invalid: choose a non-empty subset of {sorted(lora.TARGETS)}."
      )
  multiprocess.check_divisible(int(config.rl.prompts_per_step))
  micro = int(config.train.micro_batches)
  if int(config.rl.prompts_per_step) % micro:
    raise ValueError(
        f"rl.prompts_per_step={config.rl.prompts_per_step} must be divisible"
        f" by train.micro_batches={micro} (groups must not straddle"
        " micro-batches)."
    )


def _lora_rank(config: Any) -> int:
  return int(config.get("lora", {}).get("rank", 0))


def _policy_fn(lora_rank: int, alpha: float):
  """Jitted ``(train_state, frozen) -> student params``: the trainable state,
  or base + adapters merged (for sampling and scoring) under LoRA."""
  if not lora_rank:
    return lambda train_state, frozen: train_state["params"]
  merge = jax.jit(
      lambda base, adapters: lora.merge(base, adapters, alpha, lora_rank)
  )
  return lambda train_state, frozen: merge(
      frozen["base"], train_state["params"]
  )


def _key_data(key: jax.Array) -> np.ndarray:
  return np.asarray(jax.random.key_data(key))


def _build_models(config, method, need, mesh, workdir):
  """(tokenizer, student, {'teacher'?, 'ref'?: model}) outside the mesh.

  Under LoRA the reference is the student's base weights (adapters off), so
  no second copy is built.
  """
  tokenizer = inputs.load_tokenizer(config.data.tokenizer, workdir)
  teacher = "teacher" in need or "teacher" in method.frozen
  if teacher:  # checked before any model is built: fails in seconds
    pairing.check_tokenizers(config, tokenizer, ("teacher",), workdir)
  student = trainer.build_model(config.student, tokenizer, mesh)
  others = {}
  if teacher:
    others["teacher"] = trainer.build_model(config.teacher, tokenizer, mesh)
  if "ref" in need and not _lora_rank(config):
    # A frozen copy of the initial student, built again from its config.
    others["ref"] = trainer.build_model(config.student, tokenizer, mesh)
  return tokenizer, student, others


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) one RL job; returns the last host metrics."""
  config_lib.validate(config)
  _check_config(config)
  os.makedirs(workdir, exist_ok=True)
  method_name = str(config.method)
  method = methods.get(method_name, job="rl")
  loss_cfg = loss_config(config, method)
  need = method.score_models(loss_cfg)
  total = int(config.train.steps)
  updates = int(config.rl.updates_per_rollout)
  mesh = sharding.make_mesh(tuple(config.get("mesh_shape", (-1, 1, 1))))
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      save_every=int(config.train.save_every),
      keep=int(config.train.keep),
  )
  resume = workdir_lib.check_resume(config, workdir, ckpt)
  if resume.finished:
    ckpt.close()
    print(workdir_lib.finished_message(workdir, resume.step))
    return {}

  # Models are built (and sharded on arrival) before the mesh becomes the
  # ambient one, as in ``trainer``: their initialisers resolve logical axes.
  tokenizer, student, others = _build_models(
      config, method, need, mesh, workdir
  )
  if "teacher" in others:  # padded widths: logits sliced to the tokenizer
    widths = {"student": student.cfg.vocab_size}
    widths["teacher"] = others["teacher"].cfg.vocab_size
    shared = pairing.shared_vocab(config, tokenizer, widths)
    loss_cfg = loss_cfg.replace(vocab_size=shared or loss_cfg.vocab_size)
  with jax.set_mesh(mesh):
    frozen: dict[str, Any] = {}
    graphdefs: dict[str, Any] = {}
    for name, model in others.items():
      graphdefs[name], frozen[name] = nnx.split(model)
    s_graphdef, s_state = nnx.split(student)
    vocab = int(loss_cfg.vocab_size) or None
    rank = _lora_rank(config)
    alpha = float(config.get("lora", {}).get("alpha", 16.0))
    trainable = s_state
    if rank:
      # Adapters on the policy; the base weights are frozen (never donated or
      # checkpointed) and, adapters off, they are the reference policy.
      frozen["base"] = s_state
      if "ref" in need:
        graphdefs["ref"], frozen["ref"] = s_graphdef, s_state
      # Drawn from the same seed on every process, then replicated on the
      # mesh (a multi-process jit takes global arrays only).
      trainable = multiprocess.replicate(
          lora.init_lora(
              s_state,
              rank,
              jax.random.key(int(config.seed) + 1),
              tuple(config.lora.targets),
          ),
          mesh,
      )
    policy = _policy_fn(rank, alpha)

    tx, schedule = optim.from_config(config.optim, max(total * updates, 1))
    train_state = {
        "params": trainable,
        "opt": tx.init(trainable),
        "step": jnp.zeros((), jnp.int32),
    }
    rng = _key_data(jax.random.key(int(config.seed)))
    problems = rl_problems.build_problems(
        method_name, config.data, config.rl, tokenizer
    )
    source = rl_problems.PromptSource(problems, int(config.seed))
    saved = loop.Saved(source, "prompts", {"rng": rng})
    train_state, start = loop.restore(ckpt, train_state, saved)
    rng = saved.arrays["rng"]
    config_lib.save_resolved(config, workdir)
    base_key = jax.random.wrap_key_data(jnp.asarray(rng))

    spec = steps.StepSpec(
        method=method,
        student_graphdef=s_graphdef,
        frozen_graphdefs={k: graphdefs[k] for k in method.frozen},
        tx=tx,
        loss_cfg=loss_cfg,
        lora_rank=rank,
        lora_alpha=alpha,
        schedule=schedule,
    )
    update_frozen = {
        k: frozen[k] for k in method.frozen + (("base",) if rank else ())
    }
    # The one micro-batching convention: rows in order (groups contiguous),
    # split inside the jit.
    update_fn = jax.jit(
        steps.flat_step(
            steps.make_train_step(spec), int(config.train.micro_batches)
        ),
        donate_argnums=(0,),
    )
    score_frozen = {k: frozen[k] for k in need}
    score_fn = jax.jit(
        scoring.make_score_fn(
            s_graphdef,
            graphdefs,
            loss_cfg,
            tis_cap=float(config.rl.get("tis_cap", 0.0) or 0.0),
        )
    )
    student_lp = jax.jit(
        lambda p, b: scoring.token_logprobs(
            nnx.merge(s_graphdef, p), b, loss_cfg
        )
    )
    # A grader that cannot load on one process stops every process.
    roller = multiprocess.agree(
        lambda: rollouts.Roller(
            rollout_config(config),
            tokenizer,
            source,
            s_graphdef,
            student.cfg,
            mesh=mesh,
            logprob_fn=student_lp,
            vocab_size=vocab,
        ),
        "setting up the rollouts (rl.reward, rl.reward_fn)",
    )
    host_loop = _Loop(
        config, method, loss_cfg, roller, update_fn, score_fn, update_frozen,
        score_frozen, mesh, base_key, lambda ts: policy(ts, frozen),
    )  # fmt: skip
    run = loop.Run(
        config,
        workdir,
        ckpt,
        saved,
        hint="lower optim.lr (or loss.kd_beta_init)",
        # Under LoRA the export is the merged model (base + adapters).
        model_fn=lambda ts: nnx.merge(s_graphdef, policy(ts, frozen)),
        postfix=(("reward", "rollout/reward_mean"), ("loss", "train/loss")),
    )
    try:
      if method.rollouts != "mixed":  # mixed rollouts (GKD) are ungraded
        # Started once the Roller has checked rl.reward and rl.reward_fn.
        roller.pool = multiprocess.agree(
            lambda: graders.make_reward_pool(
                int(config.rl.get("reward_workers", graders.DEFAULT_WORKERS)),
                float(config.rl.reward_timeout_s),
                reward_fn=(
                    str(config.rl.reward_fn) if config.rl.reward == "fn" else ""
                ),
            ),
            "starting the reward workers",
        )
      _, last, _ = loop.run(run, host_loop.one_step, train_state, start)
    finally:
      if roller.pool is not None:
        roller.pool.close()
      ckpt.close()
  return last


class _Loop:
  """The RL step callback of ``loop.run`` (``one_step``)."""

  def __init__(
      self, config, method_spec, hp, roller, update_fn, score_fn,
      update_frozen, score_frozen, mesh, base_key, policy,
  ):  # fmt: skip
    self.config, self.roller = config, roller
    # The method's spec and its run-resolved hparams.
    self.method_spec, self.hp = method_spec, hp
    self.update_fn, self.score_fn = update_fn, score_fn
    self.update_frozen, self.score_frozen = update_frozen, score_frozen
    # The base key is checkpointed with the state; step keys fold the step
    # in, so a resumed run draws exactly the samples of an uninterrupted one.
    self.mesh, self.base_key = mesh, base_key
    self.updates = int(config.rl.updates_per_rollout)
    self.compiled = None
    self._layout = None
    # train_state -> the policy's parameters (base + adapters under LoRA).
    self.policy = policy

  def one_step(self, train_state, step: int):
    """Rollouts, scoring and updates of RL step ``step``."""
    t0 = time.perf_counter()
    key = jax.random.fold_in(self.base_key, step)
    params = self.policy(train_state)
    spec, hp = self.method_spec, self.hp
    mixed = spec.rollouts == "mixed"
    if mixed:
      batch, host, phase = self.roller.gkd_batch(
          params, step, key, float(hp.lambda_on_policy)
      )
    else:
      batch, host, phase = self.roller.policy_batch(params, step, key)
    if spec.step_arrays is not None:
      rows = len(batch["tokens"])
      batch.update(spec.step_arrays(hp, step, rows))
    t1 = time.perf_counter()
    dev = self._flat(batch)
    score_m = {}
    if not mixed:
      # The scored log-probs stay on device and join the batch as they are:
      # no host round trip between scoring and the updates.
      scored, score_m = jax.block_until_ready(
          self.score_fn(params, self.score_frozen, dev)
      )
      dev.update(scored)
    t2 = time.perf_counter()
    # Compiled ahead of time, again only if the state's shardings change:
    # GSPMD may shard replicated inputs (LoRA adapters) on the way out.
    layout = tuple(x.sharding for x in jax.tree.leaves(train_state))
    if self.compiled is None or layout != self._layout:
      self.compiled = self.update_fn.lower(
          train_state, self.update_frozen, dev
      ).compile()
      self._layout = layout
    t_c = time.perf_counter()
    step_metrics = []
    for _ in range(self.updates):
      train_state, m = self.compiled(train_state, self.update_frozen, dev)
      step_metrics.append(m)
    host_m = [metrics.to_host(m) for m in step_metrics]
    t3 = time.perf_counter()
    out = dict(host_m[-1])
    for k in out:  # clip fractions etc. averaged over the updates
      out[k] = float(np.mean([h[k] for h in host_m]))
    out.update(host)
    out.update(metrics.to_host(score_m))
    total = t3 - t0 - (t_c - t2)
    score = (t2 - t1) + phase.get("score", 0.0)
    device = phase["sample"] + score + (t3 - t_c)
    out.update({
        "time/sample": phase["sample"],
        "time/grade": phase["grade"],
        "time/score": score,
        "time/update": t3 - t_c,
        "time/step": total,
        "time/host_share": max(total - device, 0.0) / max(total, 1e-9),
    })
    return train_state, out

  def _flat(self, batch):
    return {k: self.roller.put(v) for k, v in batch.items()}
