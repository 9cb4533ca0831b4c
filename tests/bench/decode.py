"""Decode speed: the jitted sampler vs transformers, and RSD (one JSON object).

Run pinned to one core (torch is set to one thread here):

  taskset -c 0 .venv/bin/python tests/bench/decode.py

Cases (greedy, prompt 32, 128 new tokens; both sides use the same random
Qwen2 weights, saved by transformers and loaded with ``load_pretrained``):

(a) ``generate`` vs ``transformers`` ``generate``: d256/L4/heads 4:2/V32k at
    B=1 and B=8, d512/L8/heads 8:2/V151,936 at B=1 (MLP width 4d, tied
    embeddings as in the small Qwen2.5 models). Memory-bandwidth use at B=1:
    bytes a decode step must read (every weight matmul'd once, the KV cache)
    per decode-step time, over a bandwidth peak measured in the same process
    (the best of numpy copy, numpy sum and a jitted sum over 256 MiB).
    Decode-step time = (t(128 new) - t(2 new)) / 126, so prefill and
    per-call overhead cancel.
(b) RSD (default rule: T 0.7, top-p 0.95, top-k 20, 5 proposals) with the
    d512/L8 teacher and a d256/L4 student at V151,936: its decode-step time
    over (teacher step + student step) of plain greedy decoding.
(c) The same RSD rule as a plain Python loop around jitted single-model steps
    (logits to the host each token, the rule in numpy, what the paper's code
    does against an inference server): time per token, ours vs the loop.

Compile time is reported separately (first call minus a warm call). The CPU
may be shared with other jobs; the JSON records the load average.
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
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from w2s_jax import models, testing  # noqa: E402
from w2s_jax.decoding import generation, sampler  # noqa: E402

P, T = 32, 128


def _median(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def interleaved(runs, repeats):
  """Median wall time of every run(t) for t in (T, 2), interleaved."""
  for run in runs.values():  # compile both lengths first
    run(T)
    run(2)
  times = {(k, t): [] for k in runs for t in (T, 2)}
  for _ in range(repeats):
    for k, run in runs.items():
      for t in (T, 2):
        t0 = time.perf_counter()
        run(t)
        times[k, t].append(time.perf_counter() - t0)
  return {key: float(np.median(v)) for key, v in times.items()}


def bandwidth_peak(mib=256, repeats=5):
  n = mib * 2**20 // 4
  a = np.ones(n, np.float32)
  b = np.empty_like(a)
  copy = 2 * a.nbytes / _median(lambda: np.copyto(b, a), repeats)
  read = a.nbytes / _median(lambda: a.sum(), repeats)
  ja = jnp.asarray(a)
  jsum = jax.jit(jnp.sum)
  jsum(ja).block_until_ready()
  jread = a.nbytes / _median(lambda: jsum(ja).block_until_ready(), repeats)
  out = {"copy_GBps": copy / 1e9, "numpy_sum_GBps": read / 1e9}
  out["jax_sum_GBps"] = jread / 1e9
  out["peak_GBps"] = max(out.values())
  return out


def build(d, layers, heads, kv, vocab, tmp, seed=0):
  """The same random Qwen2 in transformers (torch) and in w2s_jax."""
  hf = testing.make_hf_model(
      "qwen2",
      seed=seed,
      vocab_size=vocab,
      hidden_size=d,
      intermediate_size=4 * d,
      num_hidden_layers=layers,
      num_attention_heads=heads,
      num_key_value_heads=kv,
      max_position_embeddings=P + T,
      tie_word_embeddings=True,
  )
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  path = testing.save_hf_model(
      hf, os.path.join(tmp, f"d{d}_l{layers}_v{vocab}")
  )
  return hf, models.load_pretrained(path)


def step_bytes(cfg, batch):
  params = cfg.num_params(include_embedding=not cfg.tie_embeddings)
  if cfg.tie_embeddings:
    params = cfg.num_params()  # the tied table is read once, to unembed
  kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * batch
  return 4 * params + 4 * kv * (P + T // 2)


def hf_runner(hf, prompts):
  ids = torch.tensor(prompts, dtype=torch.long)
  mask = torch.ones_like(ids)

  def run(t):
    with torch.inference_mode():
      out = hf.generate(
          input_ids=ids, attention_mask=mask, max_new_tokens=t,
          min_new_tokens=t, do_sample=False,
      )  # fmt: skip
    return out[:, P:].numpy()

  return run


def case_a(name, d, layers, heads, kv, vocab, batch, tmp, peak, repeats):
  hf, model = build(d, layers, heads, kv, vocab, tmp)
  prompts = np.random.RandomState(0).randint(0, vocab, (batch, P))
  ours = lambda t: generation.generate(model, prompts, max_new_tokens=t)
  t0 = time.perf_counter()
  out = ours(T)
  first = time.perf_counter() - t0
  hf_run = hf_runner(hf, prompts.tolist())
  ref_tokens = hf_run(T)
  med = interleaved({"ours": ours, "hf": hf_run}, repeats)
  ours_step = (med["ours", T] - med["ours", 2]) / (T - 2)
  ref_step = (med["hf", T] - med["hf", 2]) / (T - 2)
  res = {
      "case": name,
      "batch": batch,
      "ours_s": med["ours", T],
      "ours_compile_s": first - med["ours", T],
      "ours_tokens_per_s": batch * T / med["ours", T],
      "hf_s": med["hf", T],
      "hf_tokens_per_s": batch * T / med["hf", T],
      "speedup": med["hf", T] / med["ours", T],
      "ours_decode_step_ms": 1e3 * ours_step,
      "hf_decode_step_ms": 1e3 * ref_step,
      "tokens_equal_frac": float(np.mean(out.tokens == ref_tokens)),
  }
  if batch == 1:
    gbps = step_bytes(model.cfg, batch) / ours_step / 1e9
    res["ours_GBps"] = gbps
    res["bandwidth_utilisation"] = gbps / peak
  del hf
  return res, model


def make_python_rsd(teacher, student, steps, p):
  """RSD as a host loop: one jitted cached step per model, rule in numpy."""
  v = student.cfg.vocab_size

  def jitted(model):
    g, s = nnx.split(model)
    pre = jax.jit(
        lambda s, t, seg: sampler.prefill_model(
            nnx.merge(g, s), t, seg, P + steps, 1, v
        )[:2]
    )
    step = jax.jit(
        lambda s, tok, pos, c: sampler.decode_model(
            nnx.merge(g, s), tok, pos, c, v
        ),
        donate_argnums=3,
    )
    return s, pre, step

  (ts, tpre, tstep), (ss, spre, sstep) = jitted(teacher), jitted(student)

  def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()

  def choose(zt, zs, rng):
    pt = softmax(zt / p["teacher_temperature"])
    ids = np.argpartition(-pt, p["top_k"])[: p["top_k"]]
    ids = ids[np.argsort(-pt[ids], kind="stable")]
    before = np.cumsum(pt[ids]) - pt[ids]
    cat = np.where(before < p["teacher_top_p"], pt[ids], 0.0)
    cat /= cat.sum()
    ps = softmax(zs / p["student_temperature"])
    srt = np.sort(ps)[::-1]  # the student's nucleus mass needs the order
    nucleus = (np.cumsum(srt) - srt) < p["student_top_p"]
    ps = np.where(ps >= srt[nucleus].min(), ps, 0.0) / srt[nucleus].sum()
    s_ids = np.argpartition(-zs, p["top_k"])[: p["top_k"]]
    for _ in range(p["num_proposals"]):
      c = ids[rng.choice(len(ids), p=cat)]
      if c in s_ids and ps[c] >= p["threshold"]:
        return int(c)
    q = ps[s_ids] / ps[s_ids].sum()
    return int(s_ids[rng.choice(len(s_ids), p=q)])

  def run(prompt, rng):
    t0 = time.perf_counter()
    tok = jnp.asarray(prompt)[None]
    seg = jnp.ones_like(tok)
    zt, tc = tpre(ts, tok, seg)
    zs, sc = spre(ss, tok, seg)
    out = []
    for i in range(steps):
      c = choose(
          np.asarray(zt[0], np.float64), np.asarray(zs[0], np.float64), rng
      )
      out.append(c)
      cur = jnp.asarray([c], jnp.int32)
      pos = jnp.asarray([P + i], jnp.int32)
      zt, tc = tstep(ts, cur, pos, tc)
      zs, sc = sstep(ss, cur, pos, sc)
    return time.perf_counter() - t0, out

  return run


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--quick", action="store_true", help="small vocab smoke run")
  args = ap.parse_args()
  torch.set_num_threads(1)
  big_v = 4096 if args.quick else 151_936
  small_v = 2048 if args.quick else 32_000
  out = {"device": str(jax.devices()[0]), "load_avg": os.getloadavg()}
  out["torch_threads"] = torch.get_num_threads()
  out["affinity"] = sorted(os.sched_getaffinity(0))
  out["bandwidth"] = peak = bandwidth_peak()
  peak_bps = peak["peak_GBps"]
  r = args.repeats
  with tempfile.TemporaryDirectory() as tmp:
    a1, _ = case_a("d256_L4_V32k", 256, 4, 4, 2, small_v, 1, tmp, peak_bps, r)
    a8, _ = case_a("d256_L4_V32k", 256, 4, 4, 2, small_v, 8, tmp, peak_bps, r)
    a_big, teacher = case_a(
        "d512_L8_V151936", 512, 8, 8, 2, big_v, 1, tmp, peak_bps, r
    )
    out["a"] = [a1, a8, a_big]

    # (b) RSD vs the two plain steps, timed interleaved (the CPU may be
    # shared: interleaving exposes all three to the same load).
    s_cfg = teacher.cfg.replace(
        d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
        mlp_dim=1024,
    )  # fmt: skip
    student = models.init_model(s_cfg, seed=1)
    prompts = np.random.RandomState(1).randint(0, big_v, (1, P))
    plain = lambda m, t: generation.generate(m, prompts, max_new_tokens=t)
    rsd = lambda t, **kw: generation.rsd_generate(
        teacher, student, prompts, max_new_tokens=t, rng=0, **kw
    )
    t0 = time.perf_counter()
    rsd_out = rsd(T)
    rsd_first = time.perf_counter() - t0
    runs = {
        "teacher": lambda t: plain(teacher, t),
        "student": lambda t: plain(student, t),
        "rsd": rsd,
        # Random weights give near-uniform students whose 0.95-nucleus is
        # most of the vocabulary, so p_S "after" runs the bisection every
        # step; "before" needs no nucleus mass.
        "rsd_before": lambda t: rsd(t, student_prob="before"),
    }
    med = interleaved(runs, r)
    step = {k: (med[k, T] - med[k, 2]) / (T - 2) for k in runs}
    pair_step = step["teacher"] + step["student"]
    out["b"] = {
        "rsd_decode_step_ms": 1e3 * step["rsd"],
        "teacher_step_ms": 1e3 * step["teacher"],
        "student_step_ms": 1e3 * step["student"],
        "ratio": step["rsd"] / pair_step,
        "rsd_compile_s": rsd_first - med["rsd", T],
        "rsd_s": med["rsd", T],
        "fallback_rate": float(rsd_out.fallback_rate.mean()),
        "rsd_before_decode_step_ms": 1e3 * step["rsd_before"],
        "ratio_student_prob_before": step["rsd_before"] / pair_step,
    }
    rsd_full = med["rsd", T]

    # (c) the Python loop (warm-up run compiles its two step functions).
    p = dict(
        threshold=0.01, num_proposals=5, top_k=20, teacher_temperature=0.7,
        teacher_top_p=0.95, student_temperature=0.7, student_top_p=0.95,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    loop = make_python_rsd(teacher, student, T, p)
    loop(prompts[0], rng)  # compiles the two step functions
    loop_s = min(loop(prompts[0], rng)[0] for _ in range(r))
    out["c"] = {
        "python_loop_s": loop_s,
        "ours_s": rsd_full,
        "python_loop_over_ours": loop_s / rsd_full,
    }
  out["targets"] = {
      "a_speedup_d256_B1": 3.0,
      "a_speedup_d256_B8": 1.2,
      "a_speedup_d512_V151936_B1": 2.0,
      "a_bandwidth_utilisation_B1": 0.8,
      "b_ratio_max": 1.10,
  }
  out["load_avg_end"] = os.getloadavg()
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
