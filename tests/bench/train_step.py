"""SFT train step: w2s_jax (jit) vs the same model in torch eager (one JSON).

  taskset -c 0 .venv/bin/python tests/bench/train_step.py

Same random Qwen2-style weights in both (exported through save_pretrained),
forward + completion cross-entropy + backward + AdamW, B=2, T=256,
d512/L8/V32k by default. MFU = 6 * N_matmul * tokens (+ attention) per second
over a GEMM peak measured in the same run.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from w2s_jax import methods, models  # noqa: E402
from w2s_jax.training import optim, steps  # noqa: E402


def _median(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def gemm_peak(n=1024):
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  return 2 * n**3 / _median(lambda: jax.block_until_ready(f(a)), 10)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--vocab", type=int, default=32_000)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  cfg = models.get_config(
      "tiny-qwen2",
      vocab_size=args.vocab,
      d_model=args.d_model,
      num_layers=args.layers,
      num_heads=8,
      num_kv_heads=8,
      head_dim=args.d_model // 8,
      mlp_dim=4 * args.d_model,
      max_len=args.seq,
      tie_embeddings=False,
  )
  model = models.init_model(cfg)
  rng = np.random.RandomState(0)
  tokens = rng.randint(0, cfg.vocab_size, (args.batch, args.seq)).astype(
      np.int32
  )
  mask = np.ones_like(tokens)
  mask[:, : args.seq // 4] = 0  # a prompt quarter, not in the loss

  # Export first: the jitted step donates (deletes) the model's arrays.
  tmp = tempfile.TemporaryDirectory()
  models.save_pretrained(model, tmp.name)

  # --- w2s_jax
  graphdef, state = nnx.split(model)
  tx, _ = optim.make_optimizer(1e-4, 100, schedule="constant")
  spec = steps.StepSpec(
      methods.get("sft"),
      graphdef,
      {},
      tx,
      methods.get("sft").hp({"chunk_size": 256}),
  )
  step = jax.jit(steps.make_train_step(spec), donate_argnums=(0,))
  batch = {
      "tokens": jnp.asarray(tokens)[None],
      "positions": jnp.asarray(
          np.tile(np.arange(args.seq), (args.batch, 1)), jnp.int32
      )[None],
      "segment_ids": jnp.ones((1, args.batch, args.seq), jnp.int32),
      "completion_mask": jnp.asarray(mask)[None],
  }
  ts = {"params": state, "opt": tx.init(state), "step": jnp.int32(0)}
  t0 = time.perf_counter()
  compiled = step.lower(ts, {}, batch).compile()
  compile_s = time.perf_counter() - t0
  holder = [ts]

  def run_jax():
    holder[0], m = compiled(holder[0], {}, batch)
    jax.block_until_ready(m["train/loss"])

  jax_s = _median(run_jax, args.repeats)

  # --- torch eager, same weights
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  torch.set_num_threads(1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      tmp.name, dtype=torch.float32
  )
  tmp.cleanup()
  hf.train()
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
  tt = torch.tensor(tokens, dtype=torch.long)
  labels = tt.clone()
  labels[torch.tensor(mask) == 0] = -100

  def run_torch():
    opt.zero_grad()
    loss = hf(input_ids=tt, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    opt.step()

  torch_s = _median(run_torch, args.repeats)
  peak = gemm_peak()
  n_tok = args.batch * args.seq
  n_mm = cfg.num_params(include_embedding=False)
  attn = (
      3
      * 4
      * args.batch
      * args.seq**2
      * cfg.num_heads
      * cfg.head_dim
      * cfg.num_layers
  )
  flops = 6 * n_mm * n_tok + attn
  print(
      json.dumps({
          "bench": "train_step_sft",
          "config": vars(args),
          "params_matmul": n_mm,
          "compile_s": round(compile_s, 2),
          "w2s_jax_step_s": round(jax_s, 4),
          "torch_eager_step_s": round(torch_s, 4),
          "w2s_jax_tokens_per_s": round(n_tok / jax_s, 1),
          "torch_tokens_per_s": round(n_tok / torch_s, 1),
          "speedup_vs_torch": round(torch_s / jax_s, 3),
          "gemm_peak_gflops_per_s": round(peak / 1e9, 2),
          "mfu": round(flops / jax_s / peak, 3),
      })
  )


if __name__ == "__main__":
  main()
