"""tests/bench/accelerator.py --tiny runs, with the GPU machine's imports.

The GPU image has jax, flax, optax, orbax, torch and transformers but not
ml_collections, grain, tfds or math-verify: the subprocess blocks those, so
an import of them anywhere in the bench's chain fails this test.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
BLOCKED = ("ml_collections", "grain", "tensorflow_datasets", "math_verify")
_RUNNER = f"""
import importlib.abc, runpy, sys
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ImportError("not on the GPU image: " + name)
for name in list(sys.modules):
  if name.split(".")[0] in {BLOCKED!r}:
    del sys.modules[name]
sys.meta_path.insert(0, _Block())
sys.argv = ["accelerator.py", "--tiny"]
runpy.run_path({os.path.join(ROOT, "tests", "bench", "accelerator.py")!r},
               run_name="__main__")
"""


def test_tiny_accelerator_bench_runs_without_the_training_stack():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  # One CPU device, as a GPU host would have one GPU. The tiny sizes are
  # compile-bound: LLVM at -O0 halves the run (a smoke test; its timings
  # are not figures to report).
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  proc = subprocess.run(
      [sys.executable, "-c", _RUNNER],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  errors = {k: v["error"] for k, v in out.items() if isinstance(v, dict)
            and "error" in v}  # fmt: skip
  assert not errors, errors
  assert "ml_collections" not in proc.stderr
  assert out["env"]["jax"] == __import__("jax").__version__
  assert out["parity"]["max_abs_model_default"] <= 1e-4
  assert out["gemm"]["bf16_tflops"] > 0
  assert out["train"]["speedup_vs_torch_eager"] > 0
  assert 0 < out["train"]["mfu_of_measured_gemm"]
  for b in ("B1", "B4"):
    assert out["decode"][b]["speedup_vs_transformers"] > 0
  assert out["rsd"]["ratio"] > 0
  assert set(out["rsd"]["nucleus_search_ms"]) == {"ways_2", "ways_16"}
  assert out["rsd"]["nucleus_ways_default"] == 2  # CPU bisects
  assert out["distill"]["temp_chunked_over_dense"] > 0
  assert {k.rsplit("_", 1)[1] for k in out["compile"] if "_L" in k} == {
      "scan",
      "unrolled",
  }
