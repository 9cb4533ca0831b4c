"""Distill train step, teacher fused in: chunked vs dense loss (one JSON).

  taskset -c 0 .venv/bin/python tests/bench/distill_step.py

Teacher d768/L8 and student d512/L8 (Qwen2-style, tied embeddings) over
V = 151,936, B = 2, T = 256, forward KL, AdamW. The whole step (teacher
forward under stop_gradient, student forward + backward, loss, update) is
one jitted call with the train state donated. Each loss variant runs in its
own subprocess so that ``ru_maxrss`` is that variant's peak alone; the
parent prints one JSON object with both side by side: tokens/s (median of
``--repeats`` steps after a warm-up, per wall second and per CPU second of
the process, the latter robust to a shared core) and the compiled step's
``memory_analysis()`` (temp, argument, output bytes).
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)

MiB = 2**20


def _model_cfg(d_model, layers, heads, vocab, seq):
  from w2s_jax import models  # noqa: PLC0415

  return models.get_config(
      "tiny-qwen2",
      vocab_size=vocab,
      d_model=d_model,
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=heads,
      head_dim=d_model // heads,
      mlp_dim=4 * d_model,
      max_len=seq,
  )


def run_variant(args) -> dict:
  """Builds the step for ``args.variant`` and measures it (child process)."""
  import resource  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from w2s_jax import methods, models  # noqa: PLC0415
  from w2s_jax.training import optim, steps  # noqa: PLC0415

  s_cfg = _model_cfg(args.student_d, args.layers, 8, args.vocab, args.seq)
  t_cfg = _model_cfg(args.teacher_d, args.layers, 12, args.vocab, args.seq)
  s_def, s_state = nnx.split(models.init_model(s_cfg, seed=0))
  t_def, t_state = nnx.split(models.init_model(t_cfg, seed=1))
  tx, _ = optim.make_optimizer(1e-4, 100, schedule="constant")
  loss_cfg = {
      "divergence": "fkl",
      "temperature": 1.0,
      "chunked": args.variant == "chunked",
      "chunk_size": args.chunk_size,
  }
  spec = steps.StepSpec(
      methods.get("distill"),
      s_def,
      {"teacher": t_def},
      tx,
      methods.get("distill").hp(loss_cfg),
  )
  step = jax.jit(steps.make_train_step(spec), donate_argnums=(0,))
  rng = np.random.RandomState(0)
  b, t = args.batch, args.seq
  tokens = rng.randint(0, args.vocab, (1, b, t)).astype(np.int32)
  mask = np.ones((1, b, t), np.int32)
  mask[..., : t // 4] = 0  # a prompt quarter, not in the loss
  batch = {
      "tokens": jnp.asarray(tokens),
      "positions": jnp.asarray(np.tile(np.arange(t), (1, b, 1)), jnp.int32),
      "segment_ids": jnp.ones((1, b, t), jnp.int32),
      "completion_mask": jnp.asarray(mask),
  }
  frozen = {"teacher": t_state}
  state = {"params": s_state, "opt": tx.init(s_state), "step": jnp.int32(0)}
  t0 = time.perf_counter()
  compiled = step.lower(state, frozen, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  holder = [state]
  losses = []

  def run():
    holder[0], m = compiled(holder[0], frozen, batch)
    losses.append(float(jax.block_until_ready(m["train/loss"])))

  timing = {}
  if args.repeats:  # --repeats 0: compile and report memory only
    run()  # warm-up
    times, cpu_times = [], []
    for _ in range(args.repeats):
      t0, c0 = time.perf_counter(), time.process_time()
      run()
      times.append(time.perf_counter() - t0)
      cpu_times.append(time.process_time() - c0)
    step_s = float(np.median(times))
    cpu_s = float(np.median(cpu_times))
    timing = {
        "step_s": round(step_s, 4),
        "tokens_per_s": round(b * t / step_s, 2),
        # CPU seconds of this process: robust to other jobs on the core.
        "step_cpu_s": round(cpu_s, 4),
        "tokens_per_cpu_s": round(b * t / cpu_s, 2),
        "first_loss": losses[0],
    }
  temp = int(getattr(mem, "temp_size_in_bytes", 0))
  arg = int(getattr(mem, "argument_size_in_bytes", 0))
  out = int(getattr(mem, "output_size_in_bytes", 0))
  return {
      **timing,
      "compile_s": round(compile_s, 2),
      "temp_mib": round(temp / MiB, 1),
      "argument_mib": round(arg / MiB, 1),
      "output_mib": round(out / MiB, 1),
      "temp_plus_argument_mib": round((temp + arg) / MiB, 1),
      # Linux reports ru_maxrss in KiB.
      "ru_maxrss_mib": round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
      ),
  }


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--teacher_d", type=int, default=768)
  p.add_argument("--student_d", type=int, default=512)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--vocab", type=int, default=151_936)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument(
      "--chunk_size",
      type=int,
      default=0,
      help="0: chosen from N, V and D (losses.chunked.auto_chunk_size)",
  )
  p.add_argument(
      "--repeats", type=int, default=3, help="0: memory analysis only"
  )
  p.add_argument("--variant", choices=("chunked", "dense"), default=None)
  args = p.parse_args()
  if args.variant:  # child: one variant, one JSON line on stdout
    print(json.dumps(run_variant(args)))
    return
  results = {}
  for variant in ("chunked", "dense"):
    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    proc = subprocess.run(
        cmd + ["--variant", variant], capture_output=True, text=True
    )
    if proc.returncode != 0:
      results[variant] = {"error": proc.stderr[-2000:]}
      continue
    results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
  c, d = results.get("chunked", {}), results.get("dense", {})
  summary = {}
  if "temp_mib" in c and "temp_mib" in d:
    summary["temp_memory_ratio_dense_over_chunked"] = round(
        d["temp_mib"] / max(c["temp_mib"], 1e-9), 2
    )
  if "tokens_per_s" in c and "tokens_per_s" in d:
    summary.update(
        speedup_chunked_over_dense=round(
            c["tokens_per_s"] / d["tokens_per_s"], 3
        ),
        cpu_speedup_chunked_over_dense=round(
            c["tokens_per_cpu_s"] / d["tokens_per_cpu_s"], 3
        ),
        loss_rel_diff=abs(c["first_loss"] - d["first_loss"])
        / abs(d["first_loss"]),
    )
  import jax  # noqa: PLC0415

  print(
      json.dumps({
          "bench": "distill_step",
          "device": str(jax.devices()[0].device_kind),
          "affinity_cpus": sorted(os.sched_getaffinity(0)),
          "config": {
              k: getattr(args, k)
              for k in (
                  "teacher_d",
                  "student_d",
                  "layers",
                  "vocab",
                  "batch",
                  "seq",
                  "chunk_size",
                  "repeats",
              )
          },
          "chunked": c,
          "dense": d,
          **summary,
      })
  )


if __name__ == "__main__":
  main()
