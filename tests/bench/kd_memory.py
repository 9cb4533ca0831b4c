"""Dense vs vocab-chunked forward KL: XLA temp memory and wall time.

Forward KL fwd+bwd (gradients w.r.t. the student hidden states and the
student unembedding), n tokens, student width d, teacher width e, vocab V
(defaults: the issue's 1024 tokens, 896, 1536, 151,936: Qwen2.5-0.5B student,
1.5B teacher). Memory is `compiled.memory_analysis().temp_size_in_bytes` of
the jitted value-and-grad; time is the median over repeats after one warm-up.

Run pinned to one core (other processes share the machine):

  taskset -c 0 .venv/bin/python tests/bench/kd_memory.py

Prints one JSON object.
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from w2s_jax.losses import chunked, divergences


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=1024)
  p.add_argument("--d", type=int, default=896)
  p.add_argument("--e", type=int, default=1536)
  p.add_argument("--vocab", type=int, default=151936)
  p.add_argument("--chunk_size", type=int, default=chunked.DEFAULT_CHUNK_SIZE)
  p.add_argument("--dw_blocks", type=int, default=chunked.DEFAULT_DW_BLOCKS)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--memory_only", action="store_true")
  return p.parse_args()


def _dense(h_s, w_s, h_t, w_t, mask):
  loss, _ = divergences.divergence("fkl", h_s @ w_s, h_t @ w_t, mask)
  return loss


def _make_chunked(chunk_size, dw_blocks):
  def f(h_s, w_s, h_t, w_t, mask):
    loss, _ = chunked.chunked_divergence(
        "fkl",
        h_s,
        w_s,
        h_t,
        w_t,
        mask,
        chunk_size=chunk_size,
        dw_blocks=dw_blocks,
    )
    return loss

  return f


def _measure(fn, args, repeats, memory_only):
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
  compiled = step.lower(*args).compile()
  mem = compiled.memory_analysis()
  out = {
      "temp_bytes": int(mem.temp_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "argument_bytes": int(mem.argument_size_in_bytes),
  }
  if memory_only:
    return out, None
  jax.block_until_ready(compiled(*args))  # warm-up
  times, cpu_times = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    value = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  out["median_s"] = statistics.median(times)
  out["times_s"] = times
  # Process CPU time is less sensitive to other jobs on a shared machine.
  out["median_cpu_s"] = statistics.median(cpu_times)
  return out, value


def main():
  a = _parse()
  keys = jax.random.split(jax.random.key(0), 4)
  # Scaled so the logits have O(1) spread, like a trained LM head.
  h_s = jax.random.normal(keys[0], (a.n, a.d), jnp.float32)
  w_s = jax.random.normal(keys[1], (a.d, a.vocab), jnp.float32) / a.d**0.5
  h_t = jax.random.normal(keys[2], (a.n, a.e), jnp.float32)
  w_t = jax.random.normal(keys[3], (a.e, a.vocab), jnp.float32) / a.e**0.5
  mask = jnp.ones((a.n,), bool).at[: a.n // 8].set(False)  # a prompt part
  args = (h_s, w_s, h_t, w_t, mask)

  dense, v_dense = _measure(_dense, args, a.repeats, a.memory_only)
  chunk, v_chunk = _measure(
      _make_chunked(a.chunk_size, a.dw_blocks), args, a.repeats, a.memory_only
  )
  result = {
      "bench": "kd_memory",
      "loss": "fkl fwd+bwd wrt (h_s, W_s)",
      "n": a.n,
      "d": a.d,
      "e": a.e,
      "vocab": a.vocab,
      "chunk_size": a.chunk_size,
      "dw_blocks": a.dw_blocks,
      "dtype": "float32",
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "cpu_affinity": sorted(os.sched_getaffinity(0)),
      "machine": platform.processor() or platform.machine(),
      "dense": dense,
      "chunked": chunk,
      "temp_ratio": chunk["temp_bytes"] / max(dense["temp_bytes"], 1),
      "temp_target": 0.10,
  }
  if not a.memory_only:
    loss_d, (gh_d, gw_d) = v_dense
    loss_c, (gh_c, gw_c) = v_chunk
    rel = lambda x, y: float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(x)))
    result["time_ratio"] = chunk["median_s"] / dense["median_s"]
    result["cpu_time_ratio"] = chunk["median_cpu_s"] / dense["median_cpu_s"]
    result["time_target"] = 1.0
    result["max_rel_diff"] = {
        "loss": abs(float(loss_d) - float(loss_c)) / abs(float(loss_d)),
        "grad_h_s": rel(gh_d, gh_c),
        "grad_w_s": rel(gw_d, gw_c),
    }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
