"""Forward throughput and CPU MFU of the transformer (prints one JSON object).

Run pinned to one core, as the numbers in closing notes are:

  taskset -c 0 .venv/bin/python tests/bench/forward.py

MFU = model FLOPs per second / a GEMM peak measured in the same run (jitted
fp32 matmul of the same core). Model FLOPs of a forward pass are
2 * N_matmul * tokens (N_matmul = every weight used in a matmul, unembedding
included, embedding lookup excluded) plus the attention score/value matmuls
4 * B * L^2 * N * H (the full square: the causal half is not skipped). The
issue's 6 * N * tokens is the training (forward + backward) count; it is
reported too, for reference, as ``mfu_if_6N``.
"""

import argparse
import json
import os
import time

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from w2s_jax import models  # noqa: E402


def _median_time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def gemm_peak_flops(n=1024, repeats=10):
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  return 2 * n**3 / _median_time(f, a, repeats=repeats)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv_heads", type=int, default=8)
  p.add_argument("--vocab", type=int, default=32_000)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()

  cfg = models.get_config(
      "tiny-llama",
      vocab_size=args.vocab,
      d_model=args.d_model,
      num_layers=args.layers,
      num_heads=args.heads,
      num_kv_heads=args.kv_heads,
      head_dim=args.d_model // args.heads,
      mlp_dim=4 * args.d_model,
      rope_scaling=None,
      max_len=args.seq,
  )
  graphdef, state = nnx.split(models.init_model(cfg))
  fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
  tokens = jnp.asarray(
      np.random.RandomState(0).randint(
          0, cfg.vocab_size, (args.batch, args.seq)
      ),
      jnp.int32,
  )
  t0 = time.perf_counter()
  jax.block_until_ready(fwd(state, tokens))
  compile_s = time.perf_counter() - t0
  step_s = _median_time(fwd, state, tokens, repeats=args.repeats)
  peak = gemm_peak_flops()

  n_tok = args.batch * args.seq
  n_matmul = cfg.num_params(include_embedding=False)
  attn = (
      4
      * args.batch
      * args.seq**2
      * cfg.num_heads
      * cfg.head_dim
      * cfg.num_layers
  )
  flops = 2 * n_matmul * n_tok + attn
  print(
      json.dumps({
          "bench": "forward",
          "device": str(jax.devices()[0].device_kind),
          "config": vars(args),
          "params_matmul": n_matmul,
          "compile_s": round(compile_s, 2),
          "step_s": round(step_s, 4),
          "tokens_per_s": round(n_tok / step_s, 1),
          "model_gflops_per_s": round(flops / step_s / 1e9, 2),
          "gemm_peak_gflops_per_s": round(peak / 1e9, 2),
          "mfu": round(flops / step_s / peak, 3),
          "mfu_if_6N": round(6 * n_matmul * n_tok / step_s / peak, 3),
      })
  )


if __name__ == "__main__":
  main()
