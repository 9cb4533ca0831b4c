"""Accelerator benchmark: every figure of the GPU table in one JSON object.

  PYTHONPATH=. python tests/bench/accelerator.py            # GPU sizes
  PYTHONPATH=. python tests/bench/accelerator.py --tiny     # CPU, < 1 min

Figures (random weights with the real shapes; the baseline torch +
transformers run in the same process on the same weights):

* ``parity``: fp32 logits vs transformers on a tiny Qwen2, with the model's
  default matmul precision (fp32 -> 'highest') and with 'default' (TF32 on
  recent NVIDIA GPUs) for contrast.
* ``gemm``: bf16 GEMM throughput (the MFU denominator actually reachable).
* ``attention``: causal attention fwd+bwd per layer, each backend.
* ``train``: SFT step (fp32 params, bf16 compute, AdamW, the vocab-chunked
  loss) vs torch eager (autocast bf16, fused AdamW on CUDA); MFU over the
  nominal bf16 peak of known cards and over the measured GEMM peak; compile
  seconds and XLA temp memory.
* ``decode``: greedy decoding, bf16 weights, B 1 and B 64, vs transformers
  ``generate``; MBU = bytes a step must read / step time / peak bandwidth.
  Step time = (t(T) - t(2)) / (T - 2), so prefill and call overhead cancel.
* ``rsd``: RSD decode step over (teacher step + student step), and the
  top-p nucleus search alone at the student's [B, V], 2 vs 16 ways.
* ``distill``: distill step (bf16 teacher fused), chunked vs dense loss: time
  and XLA temp memory.
* ``compile``: seconds to lower and compile the SFT train step from
  ``jax.ShapeDtypeStruct`` inputs (no weight memory), scanned vs unrolled.

Only the model, loss, decoding and training-step code of w2s_jax is imported
(no ml_collections, grain, tfds, math-verify), so the script runs where only
jax, flax, optax, torch and transformers are installed, with the project on
PYTHONPATH. torch and transformers are imported inside the functions.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback

# torch shares the GPU in this process: JAX must not grab 75 % of it upfront.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from w2s_jax import methods  # noqa: E402
from w2s_jax.decoding import generation, sampling_params  # noqa: E402
from w2s_jax.models import attention as attention_lib  # noqa: E402
from w2s_jax.models import config as model_config  # noqa: E402
from w2s_jax.models import hf_io, transformer  # noqa: E402
from w2s_jax.training import optim, steps  # noqa: E402

# Nominal dense bf16 peaks (FLOP/s) and memory bandwidths (B/s) by card.
NOMINAL = {
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "A100": (312e12, 2.0e12),
}
GIB = 2**30

FULL = dict(
    parity_len=24,
    gemm_n=8192,
    attn=dict(b=8, t=1024, n=14, k=2, h=64),
    train=dict(preset="qwen2.5-0.5b", b=8, t=1024),
    decode=dict(preset="qwen2.5-0.5b", prompt=32, new=256, batches=(1, 64)),
    rsd=dict(teacher="qwen2.5-1.5b", student="qwen2.5-0.5b", b=8, new=256),
    distill=dict(teacher="qwen2.5-1.5b", student="qwen2.5-0.5b", b=4, t=1024),
    compile=dict(presets=("qwen2.5-0.5b", "qwen2.5-7b"), b=8, t=1024),
    repeats=5,
    step_diff=True,
)
_TINY_MODEL = dict(
    vocab_size=256,
    d_model=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    mlp_dim=128,
)
TINY = dict(
    parity_len=12,
    gemm_n=256,
    attn=dict(b=2, t=64, n=4, k=2, h=16),
    train=dict(preset="tiny-qwen2", b=2, t=32),
    decode=dict(preset="tiny-qwen2", prompt=8, new=6, batches=(1, 4)),
    rsd=dict(teacher="tiny-qwen2", student="tiny-qwen2", b=2, new=6),
    distill=dict(teacher="tiny-qwen2", student="tiny-qwen2", b=2, t=32),
    compile=dict(presets=("tiny-qwen2",), b=1, t=16, layers=2),
    repeats=1,
    step_diff=False,
)


def _cfg(preset, tiny, **kw):
  over = dict(_TINY_MODEL, max_len=256) if tiny else {}
  return model_config.get_config(preset, **{**over, **kw})


def _median(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _torch_device():
  import torch  # noqa: PLC0415

  return "cuda" if torch.cuda.is_available() else "cpu"


def _hf_from(model, tmp, name, dtype):
  """The same weights in transformers (exported through save_pretrained)."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  path = os.path.join(tmp, name)
  hf_io.save_pretrained(model, path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=getattr(torch, dtype)
  )
  return hf.to(_torch_device())


def environment():
  import flax  # noqa: PLC0415
  import optax  # noqa: PLC0415
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  dev = jax.devices()[0]
  out = {
      "platform": dev.platform,
      "device_kind": dev.device_kind,
      "device_count": jax.device_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": (
          getattr(jax.lib, "__version__", None)
          or __import__("jaxlib").__version__
      ),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "numpy": np.__version__,
      "load_avg": os.getloadavg(),
  }
  if torch.cuda.is_available():
    out["torch_cuda"] = torch.version.cuda
    out["torch_device"] = torch.cuda.get_device_name(0)
  return out


def _nominal():
  kind = jax.devices()[0].device_kind
  for name, peaks in NOMINAL.items():
    if name in kind:
      return peaks
  return None, None


def parity(sz, tmp):
  """fp32 logits vs transformers, default precision and 'default' matmuls."""
  import torch  # noqa: PLC0415

  cfg = model_config.get_config("tiny-qwen2")
  model = transformer.init_model(cfg, seed=0)
  hf = _hf_from(model, tmp, "parity", "float32")
  tokens = np.random.RandomState(0).randint(0, 256, (2, sz["parity_len"]))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens, device=hf.device)).logits.float().cpu()
  ref = ref.numpy()
  out = {"precision_default_for_fp32": cfg.precision}
  for prec in ("", "default"):
    m = transformer.init_model(cfg.replace(matmul_precision=prec), seed=0)
    got = np.asarray(jax.jit(lambda m, t: m(t))(m, jnp.asarray(tokens)))
    out[f"max_abs_{prec or 'model_default'}"] = float(np.abs(got - ref).max())
  out["bound"] = 1e-4
  return out


def gemm(sz):
  n = sz["gemm_n"]
  a = jnp.ones((n, n), jnp.bfloat16)
  f = jax.jit(lambda a: a @ a)
  s = _median(lambda: jax.block_until_ready(f(a)), sz["repeats"])
  return {"n": n, "bf16_tflops": 2 * n**3 / s / 1e12}


def attention_bench(sz):
  """Causal attention fwd+bwd [B, T, N:K, H] in bf16, per backend."""
  p = sz["attn"]
  ks = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(ks[0], (p["b"], p["t"], p["n"], p["h"]), jnp.bfloat16)
  k = jax.random.normal(ks[1], (p["b"], p["t"], p["k"], p["h"]), jnp.bfloat16)
  v = jax.random.normal(ks[2], (p["b"], p["t"], p["k"], p["h"]), jnp.bfloat16)
  seg = jnp.ones((p["b"], p["t"]), jnp.int32).at[0, :7].set(0)
  auto_is = attention_lib.check_backend("auto")
  out = {"shape": p, "auto_is": auto_is}
  # 'auto' is timed only where it is another kernel than 'xla' (not on CPU).
  for backend in ("xla",) + (("auto",) if auto_is != "xla" else ()):
    for name, s in (("causal", None), ("left_padded", seg)):

      def loss(q, k, v, s=s, backend=backend):
        o = attention_lib.attention(q, k, v, s, backend)
        return jnp.sum(o.astype(jnp.float32))

      f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      t = _median(lambda f=f: jax.block_until_ready(f(q, k, v)), sz["repeats"])
      out[f"{backend}_{name}_fwd_bwd_ms"] = 1e3 * t
  return out


def _train_flops(cfg, b, t):
  n_mm = cfg.num_params(include_embedding=False)
  attn = 3 * 4 * b * t**2 * cfg.num_heads * cfg.head_dim * cfg.num_layers
  return 6 * n_mm * b * t + attn


def _sft_batch(b, t, vocab):
  rng = np.random.RandomState(0)
  mask = np.ones((1, b, t), np.int32)
  mask[..., : t // 4] = 0
  return {
      "tokens": jnp.asarray(rng.randint(0, vocab, (1, b, t)), jnp.int32),
      "positions": jnp.asarray(np.tile(np.arange(t), (1, b, 1)), jnp.int32),
      "segment_ids": jnp.ones((1, b, t), jnp.int32),
      "completion_mask": jnp.asarray(mask),
  }


def _sft_step(cfg):
  graphdef, state = nnx.split(transformer.abstract_model(cfg))
  tx, _ = optim.make_optimizer(1e-4, 100, schedule="constant")
  spec = steps.StepSpec(
      methods.get("sft"), graphdef, {}, tx, methods.get("sft").hp({})
  )
  return jax.jit(steps.make_train_step(spec), donate_argnums=(0,)), tx, state


def train(sz, tmp, gemm_tflops):
  p = sz["train"]
  tiny = p["preset"].startswith("tiny")
  cfg = _cfg(p["preset"], tiny, dtype="bfloat16", max_len=p["t"])
  model = transformer.init_model(cfg, seed=0)
  hf = _hf_from(model, tmp, "train", "float32")  # before donation
  step, tx, _ = _sft_step(cfg)
  _, state = nnx.split(model)
  ts = {"params": state, "opt": tx.init(state), "step": jnp.int32(0)}
  batch = _sft_batch(p["b"], p["t"], cfg.vocab_size)
  t0 = time.perf_counter()
  compiled = step.lower(ts, {}, batch).compile()
  compile_s = time.perf_counter() - t0
  temp = compiled.memory_analysis().temp_size_in_bytes
  holder = [ts]

  def run_jax():
    holder[0], m = compiled(holder[0], {}, batch)
    jax.block_until_ready(m["train/loss"])

  jax_s = _median(run_jax, sz["repeats"])
  holder.clear()  # free the device state before torch allocates

  import torch  # noqa: PLC0415

  dev = hf.device
  hf.train()
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=dev.type == "cuda")
  tokens = torch.tensor(np.asarray(batch["tokens"][0]), device=dev).long()
  labels = tokens.clone()
  labels[torch.tensor(np.asarray(batch["completion_mask"][0])) == 0] = -100

  def run_torch():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
      loss = hf(input_ids=tokens, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    opt.step()
    if dev.type == "cuda":
      torch.cuda.synchronize()

  torch_s = _median(run_torch, sz["repeats"])
  flops = _train_flops(cfg, p["b"], p["t"])
  nominal, _ = _nominal()
  out = {
      "shape": {**p, "d_model": cfg.d_model, "layers": cfg.num_layers},
      "w2s_jax_step_s": jax_s,
      "torch_eager_step_s": torch_s,
      "speedup_vs_torch_eager": torch_s / jax_s,
      "w2s_jax_tokens_per_s": p["b"] * p["t"] / jax_s,
      "mfu_of_measured_gemm": flops / jax_s / (gemm_tflops * 1e12),
      "torch_mfu_of_measured_gemm": flops / torch_s / (gemm_tflops * 1e12),
      "compile_s": compile_s,
      "xla_temp_gib": temp / GIB,
      "attention": cfg.attention,
      "remat": cfg.remat,
  }
  if nominal:
    out["mfu_nominal"] = flops / jax_s / nominal
    out["torch_mfu_nominal"] = flops / torch_s / nominal
  return out


def _decode_step_bytes(cfg, batch, ctx_len):
  n = cfg.num_params() if cfg.tie_embeddings else cfg.num_params(False)
  kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * batch * ctx_len
  return 2 * (n + kv)  # bf16


def _step_times(runs, new, sz):
  """Per-token decode time of each run(t), timed interleaved.

  (t(new) - t(2)) / (new - 2): prefill and call overhead cancel. --tiny
  skips the t(2) calls (half the compiles): t(new) / new.
  """
  lengths = (new, 2) if sz["step_diff"] else (new,)
  for run in runs.values():
    for t in lengths:
      run(t)
  times = {(k, t): [] for k in runs for t in lengths}
  for _ in range(sz["repeats"]):
    for k, run in runs.items():
      for t in lengths:
        t0 = time.perf_counter()
        run(t)
        times[k, t].append(time.perf_counter() - t0)
  med = {key: float(np.median(v)) for key, v in times.items()}
  if not sz["step_diff"]:
    return {k: med[k, new] / new for k in runs}
  return {k: (med[k, new] - med[k, 2]) / (new - 2) for k in runs}


def decode(sz, tmp):
  import torch  # noqa: PLC0415

  p = sz["decode"]
  tiny = p["preset"].startswith("tiny")
  cfg = _cfg(p["preset"], tiny, param_dtype="bfloat16", dtype="bfloat16")
  model = transformer.init_model(cfg, seed=0)
  hf = _hf_from(model, tmp, "decode", "bfloat16")
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  _, bandwidth = _nominal()
  out = {"shape": {**p, "d_model": cfg.d_model, "layers": cfg.num_layers}}
  for b in p["batches"]:
    prompts = np.random.RandomState(b).randint(0, 256, (b, p["prompt"]))
    ids = torch.tensor(prompts, device=hf.device).long()

    def ours(t, prompts=prompts):
      return generation.generate(model, prompts, max_new_tokens=t).tokens

    def theirs(t, ids=ids):
      with torch.inference_mode():
        return hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=t,
            min_new_tokens=t,
            do_sample=False,
        )

    st = _step_times({"ours": ours, "hf": theirs}, p["new"], sz)
    row = {
        "ours_step_ms": 1e3 * st["ours"],
        "transformers_step_ms": 1e3 * st["hf"],
        "speedup_vs_transformers": st["hf"] / st["ours"],
        "ours_tokens_per_s": b / st["ours"],
    }
    gbps = _decode_step_bytes(cfg, b, p["prompt"] + p["new"] // 2) / st["ours"]
    row["ours_GBps"] = gbps / 1e9
    if bandwidth:
      row["mbu"] = gbps / bandwidth
    out[f"B{b}"] = row
  return out


def rsd(sz):
  p = sz["rsd"]
  tiny = p["teacher"].startswith("tiny")
  bf16 = dict(param_dtype="bfloat16", dtype="bfloat16")
  teacher = transformer.init_model(_cfg(p["teacher"], tiny, **bf16), seed=0)
  # --tiny: the student shares the teacher's shape (other weights), so the
  # plain decode loop compiles once for both.
  student = transformer.init_model(_cfg(p["student"], tiny, **bf16), seed=1)
  prompts = np.random.RandomState(1).randint(0, 256, (p["b"], 16))
  runs = {
      "teacher": lambda t: generation.generate(teacher, prompts, t).tokens,
      "student": lambda t: generation.generate(student, prompts, t).tokens,
      "rsd": (
          lambda t: generation.rsd_generate(
              teacher, student, prompts, t, rng=0
          ).tokens
      ),
  }
  st = _step_times(runs, p["new"], sz)
  # The student's top-p nucleus search (random weights: flat distributions,
  # so it runs every step): 2 ways (CPU's bisection) vs 16 (accelerators').
  probs_BV = jax.nn.softmax(
      jnp.asarray(
          np.random.RandomState(2).randn(p["b"], student.cfg.vocab_size)
      )
      * 0.03,
      axis=-1,
  )
  nucleus_ms = {}
  for ways in (2, 16):
    f = jax.jit(lambda x, w=ways: sampling_params.nucleus_keep(x, 0.95, w))
    run = lambda f=f: jax.block_until_ready(f(probs_BV))
    nucleus_ms[f"ways_{ways}"] = 1e3 * _median(run, max(3, sz["repeats"]))
  return {
      "shape": p,
      **{f"{k}_step_ms": 1e3 * v for k, v in st.items()},
      "ratio": st["rsd"] / (st["teacher"] + st["student"]),
      "target": 1.10,
      "nucleus_search_ms": nucleus_ms,
      "nucleus_ways_default": sampling_params.nucleus_search_ways(),
  }


def distill(sz):
  p = sz["distill"]
  tiny = p["teacher"].startswith("tiny")
  t_cfg = _cfg(p["teacher"], tiny, param_dtype="bfloat16", dtype="bfloat16")
  s_cfg = _cfg(p["student"], tiny, dtype="bfloat16")
  out = {"shape": p, "vocab": s_cfg.vocab_size}
  t_def, t_state = nnx.split(transformer.init_model(t_cfg, seed=1))
  tx, _ = optim.make_optimizer(1e-4, 100, schedule="constant")
  batch = _sft_batch(p["b"], p["t"], s_cfg.vocab_size)
  for variant in ("chunked", "dense"):
    s_def, s_state = nnx.split(transformer.init_model(s_cfg, seed=0))
    loss_cfg = {"divergence": "fkl", "chunked": variant == "chunked"}
    spec = steps.StepSpec(
        methods.get("distill"),
        s_def,
        {"teacher": t_def},
        tx,
        methods.get("distill").hp(loss_cfg),
    )
    step = jax.jit(steps.make_train_step(spec), donate_argnums=(0,))
    ts = {"params": s_state, "opt": tx.init(s_state), "step": jnp.int32(0)}
    frozen = {"teacher": t_state}
    compiled = step.lower(ts, frozen, batch).compile()
    holder = [ts]

    def run(compiled=compiled, holder=holder, frozen=frozen):
      holder[0], m = compiled(holder[0], frozen, batch)
      jax.block_until_ready(m["train/loss"])

    out[variant] = {
        "step_s": _median(run, sz["repeats"]),
        "xla_temp_gib": compiled.memory_analysis().temp_size_in_bytes / GIB,
    }
  c, d = out["chunked"], out["dense"]
  out["time_chunked_over_dense"] = c["step_s"] / d["step_s"]
  out["temp_chunked_over_dense"] = c["xla_temp_gib"] / max(
      d["xla_temp_gib"], 1e-12
  )
  return out


def compile_times(sz):
  """Lower + compile the SFT step from ShapeDtypeStructs (no weights)."""
  p = sz["compile"]
  out = {}
  for preset in p["presets"]:
    tiny = preset.startswith("tiny")
    extra = {"num_layers": p["layers"]} if "layers" in p else {}
    for scan in (False, True):
      cfg = _cfg(
          preset, tiny, dtype="bfloat16", max_len=p["t"], scan_layers=scan,
          remat="dots", **extra,
      )  # fmt: skip
      step, tx, abstract = _sft_step(cfg)
      ts = {
          "params": abstract,
          "opt": jax.eval_shape(tx.init, abstract),
          "step": jax.ShapeDtypeStruct((), jnp.int32),
      }
      batch = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
          _sft_batch(p["b"], p["t"], 8),
      )
      t0 = time.perf_counter()
      lowered = step.lower(ts, {}, batch)
      t1 = time.perf_counter()
      compiled = lowered.compile()
      t2 = time.perf_counter()
      key = f"{preset}_L{cfg.num_layers}_{'scan' if scan else 'unrolled'}"
      out[key] = {
          "lower_s": t1 - t0,
          "compile_s": t2 - t1,
          "xla_temp_gib": compiled.memory_analysis().temp_size_in_bytes / GIB,
      }
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tiny", action="store_true", help="CPU sizes, < 1 min")
  ap.add_argument(
      "--only", default="", help="comma-separated sections (default: all)"
  )
  args = ap.parse_args(argv)
  sz = TINY if args.tiny else FULL
  import torch  # noqa: PLC0415

  if not torch.cuda.is_available():
    torch.set_num_threads(1)
  only = set(filter(None, args.only.split(",")))
  out = {"bench": "accelerator", "tiny": args.tiny, "env": environment()}
  t_start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    gemm_tflops = None
    sections = [
        ("parity", lambda: parity(sz, tmp)),
        ("gemm", lambda: gemm(sz)),
        ("attention", lambda: attention_bench(sz)),
        ("train", lambda: train(sz, tmp, gemm_tflops)),
        ("decode", lambda: decode(sz, tmp)),
        ("rsd", lambda: rsd(sz)),
        ("distill", lambda: distill(sz)),
        ("compile", lambda: compile_times(sz)),
    ]
    for name, fn in sections:
      if only and name not in only and not (name == "gemm" and "train" in only):
        continue
      t0, c0 = time.perf_counter(), time.process_time()
      try:
        out[name] = fn()
      except Exception as e:  # noqa: BLE001  (one section's failure is data)
        out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        traceback.print_exc(file=sys.stderr)
      out[name]["section_s"] = time.perf_counter() - t0
      out[name]["section_cpu_s"] = time.process_time() - c0
      if name == "gemm" and "bf16_tflops" in out["gemm"]:
        gemm_tflops = out["gemm"]["bf16_tflops"]
  out["total_s"] = time.perf_counter() - t_start
  out["env"]["load_avg_end"] = os.getloadavg()
  print(json.dumps(out, indent=1, default=float))
  return out


if __name__ == "__main__":
  main()
