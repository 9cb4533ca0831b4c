"""RL step benchmark: time per phase, peak memory, dense vs chunked scoring.

  # CPU, reduced shape, pinned (the default; about 10 minutes on one core):
  taskset -c 0 .venv/bin/python tests/bench/rl_step.py
  # XLA temp memory of scoring + update, dense vs vocab-chunked, V 151,936:
  taskset -c 0 .venv/bin/python tests/bench/rl_step.py --memory
  # The issue's shape (GPU): Qwen2.5-0.5B student, 1.5B-shaped teacher,
  # 16 prompts x G 8 x 512 new tokens:
  python tests/bench/rl_step.py --shape=real

Phases: the real RL loop (``main.run_job``) runs ``--steps`` + 1 steps; the
first (compilation) is dropped and the JSON reports per-phase medians of the
run's own ``time/*`` metrics: sampling, reward grading, scoring (student
π_old plus the reference / the fused teacher), the update, and the host share
(the part of the step outside jitted code: decoding, grading, shaping, batch
assembly, transfers). Each method runs in its own process so that the peak
memory (host RSS, and the device's peak bytes where the backend reports it)
is that method's.

Shapes (``--shape``):
  cpu   student d128/L3 and teacher d192/L4 with Qwen's vocabulary width
        (151,936 logits, the tokenizer's ids in use), 8 prompts x G 8,
        <= 32 new tokens;
  real  the qwen2.5-0.5b preset (random weights) and a qwen2.5-1.5b-shaped
        teacher, 16 prompts x G 8, <= 512 new tokens.

``--memory`` compiles (without running) the scoring call and one GRPO and one
KDRL update at V 151,936 with ``loss.chunked`` False and True and reports
``memory_analysis().temp_size_in_bytes``.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
sys.path.insert(0, ROOT)
PHASES = ("sample", "grade", "score", "update", "step", "host_share")
QWEN_VOCAB = 151_936


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", choices=("cpu", "real"), default="cpu")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--memory", action="store_true")
  p.add_argument("--rows", type=int, default=16, help="--memory: B rows")
  p.add_argument("--length", type=int, default=512, help="--memory: L")
  p.add_argument("--layers", type=int, default=1, help="--memory: layers")
  p.add_argument("--only", default="", help=argparse.SUPPRESS)
  return p.parse_args()


def _config(spec: str, args):
  from w2s_jax import config_lib  # noqa: PLC0415

  c = config_lib.load(os.path.join(ROOT, spec))
  s, t = c.student.overrides, c.teacher.overrides
  if args.shape == "real":
    c.student.preset, c.teacher.preset = "qwen2.5-0.5b", "qwen2.5-1.5b"
    c.rl.prompts_per_step, c.rl.max_new_tokens = 16, 512
  else:
    s.d_model, s.num_layers, s.num_heads, s.num_kv_heads = 128, 3, 4, 2
    s.head_dim, s.mlp_dim = 32, 512
    t.d_model, t.num_layers, t.num_heads, t.num_kv_heads = 192, 4, 6, 2
    t.head_dim, t.mlp_dim = 32, 768
    s.vocab_size = t.vocab_size = QWEN_VOCAB
    c.rl.prompts_per_step, c.rl.max_new_tokens = 8, 32
  c.rl.group_size = 8
  c.train.steps = args.steps + 1
  c.train.save_every = 10_000
  c.train.log_every = 1
  c.train.tensorboard = False
  c.train.export = False
  c.data.num_examples = 256
  return c


def _peak_device_bytes() -> int | None:
  import jax  # noqa: PLC0415

  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run_one(spec: str, args) -> dict:
  from w2s_jax import main  # noqa: PLC0415
  from w2s_jax.training import metrics  # noqa: PLC0415

  cfg = _config(spec, args)
  # The tokenizer's ids index the first columns of the padded logits.
  with tempfile.TemporaryDirectory() as wd:
    from w2s_jax.training import inputs  # noqa: PLC0415

    cfg.loss.vocab_size = inputs.load_tokenizer(
        cfg.data.tokenizer, wd
    ).vocab_size
    main.run_job(cfg, wd)
    rows = metrics.read_metrics(wd)[1:]  # drop the compiling step
  out = {
      (f"{p}_s" if p != "host_share" else p): float(
          np.median([r[f"time/{p}"] for r in rows])
      )
      for p in PHASES
  }
  out["response_length"] = float(
      np.mean([r["rollout/response_length"] for r in rows])
  )
  out["steps_timed"] = len(rows)
  out["peak_host_rss_mb"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
  )
  peak = _peak_device_bytes()
  if peak is not None:
    out["peak_device_mb"] = round(peak / 2**20, 1)
  return out


def _child(method: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--only={method}"]
  cmd += [f"--shape={args.shape}", f"--steps={args.steps}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(args) -> dict:
  """XLA temp bytes of the scoring call and the GRPO / KDRL updates."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from w2s_jax import methods  # noqa: PLC0415
  from w2s_jax.models import config as model_config  # noqa: PLC0415
  from w2s_jax.models import transformer  # noqa: PLC0415
  from w2s_jax.rl import scoring  # noqa: PLC0415
  from w2s_jax.training import steps  # noqa: PLC0415

  def abstract(preset, **kw):
    cfg = model_config.get_config(preset, num_layers=args.layers, **kw)
    return nnx.split(transformer.abstract_model(cfg))

  s_def, s_state = abstract("qwen2.5-0.5b")
  t_def, t_state = abstract("qwen2.5-1.5b")
  b, length = args.rows, args.length
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  batch = {
      "tokens": i32(b, length),
      "positions": i32(b, length),
      "segment_ids": i32(b, length),
      "completion_mask": i32(b, length),
      "advantages": f32(b),
      "correct": f32(b),
      "off_policy": f32(b),
      "kd_beta": f32(b),
      "old_logprobs": f32(b, length - 1),
      "teacher_logprobs": f32(b, length - 1),
  }
  out = {}
  for chunked in (False, True):
    cfg = dict(chunked=chunked, chunk_size=96)
    score = jax.jit(
        scoring.make_score_fn(
            s_def, {"teacher": t_def}, scoring.ScoringHparams(**cfg)
        )
    )
    mem = {
        "score": (
            score.lower(s_state, {"teacher": t_state}, batch)
            .compile()
            .memory_analysis()
        )
    }
    for method in ("grpo", "kdrl"):
      tx = optax.adam(1e-6)
      m = methods.get(method)
      hp = dict(cfg, max_len=length, agg="token-mean", dual_clip=0.0)
      hp.update(beta_ref=0.0)
      if "group_size" in m.hparams.keys():  # KDRL group masking
        hp["group_size"] = 8
      spec = steps.StepSpec(
          method=m,
          student_graphdef=s_def,
          frozen_graphdefs={},
          tx=tx,
          loss_cfg=m.hparams(**hp),
      )
      state = {
          "params": s_state,
          "opt": jax.eval_shape(tx.init, s_state),
          "step": i32(),
      }
      fn = jax.jit(
          steps.flat_step(steps.make_train_step(spec), 1),
          donate_argnums=(0,),
      )
      mem[f"update_{method}"] = (
          fn.lower(state, {}, batch).compile().memory_analysis()
      )
    key = "chunked" if chunked else "dense"
    out[key] = {
        k: round(m.temp_size_in_bytes / 2**20, 1) for k, m in mem.items()
    }
  out["dense_over_chunked"] = {
      k: round(out["dense"][k] / max(out["chunked"][k], 1e-9), 1)
      for k in out["dense"]
  }
  return {
      "bench": "rl_step_memory",
      "unit": "MiB of XLA temp memory (compiled.memory_analysis)",
      "vocab": QWEN_VOCAB,
      "rows": b,
      "length": length,
      "student": f"qwen2.5-0.5b widths, {args.layers} layer(s)",
      "teacher": f"qwen2.5-1.5b widths, {args.layers} layer(s)",
      "backend": jax.default_backend(),
      **out,
  }


def main_() -> None:
  args = _parse()
  if args.shape == "cpu":
    os.environ.setdefault(
        "XLA_FLAGS",
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    )
  if args.only:
    spec = {"grpo": "configs/grpo.py", "kdrl": "configs/kdrl.py"}[args.only]
    print(json.dumps(run_one(spec, args)))
    return
  if args.memory:
    print(json.dumps(memory(args), indent=1, sort_keys=True))
    return
  result = {
      "bench": "rl_step",
      "shape": args.shape,
      "machine": platform.processor() or platform.machine(),
      "load_avg_1m_before": round(os.getloadavg()[0], 2),
      "grpo": _child("grpo", args),
      "kdrl": _child("kdrl", args),
      "load_avg_1m_after": round(os.getloadavg()[0], 2),
  }
  if args.shape == "cpu":
    result["models"] = "student d128/L3, teacher d192/L4, V 151,936 logits"
    result["rollout"] = "8 prompts x G 8, <= 32 new tokens"
  else:
    result["models"] = "qwen2.5-0.5b student, qwen2.5-1.5b-shaped teacher"
    result["rollout"] = "16 prompts x G 8, <= 512 new tokens"
  print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
  main_()
