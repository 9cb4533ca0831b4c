"""Executes the notebooks in colabs/ at CI sizes and checks their outputs.

Each notebook runs top to bottom in a fresh kernel of this interpreter (a
kernelspec written to a temp dir, so ``python3`` on PATH cannot pick another
venv), from the repository root, with ``W2S_NOTEBOOK_CI=1`` (tiny sizes) and
a single CPU device (the notebooks are single-device). Every notebook ends by
printing one ``W2S_SUMMARY {json}`` line; the tests recompute what they can
independently (numpy float64) and check the library's numbers against it.
"""

from __future__ import annotations

import json
import pathlib
import sys

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLABS = ROOT / "colabs"
CELL_TIMEOUT_S = 180
SUMMARY = "W2S_SUMMARY "
BADGE = (
    "https://colab.research.google.com/github/w2s-jax/w2s_jax/blob/main/colabs/"
)


def _kernel_manager(tmp_path: pathlib.Path) -> KernelManager:
  spec_dir = tmp_path / "kernels" / "w2s-ci"
  spec_dir.mkdir(parents=True)
  spec = {
      "argv": [
          sys.executable,
          "-m",
          "ipykernel_launcher",
          "-f",
          "{connection_file}",
      ],
      "display_name": "w2s_jax CI",
      "language": "python",
      # conftest.py asks for 8 fake devices; the notebooks are single-device.
      "env": {
          "W2S_NOTEBOOK_CI": "1",
          "XLA_FLAGS": "",
          "JAX_PLATFORMS": "cpu",
          "TOKENIZERS_PARALLELISM": "false",
          "MPLBACKEND": "module://matplotlib_inline.backend_inline",
          "PYTHONPATH": str(ROOT),
      },
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
  return KernelManager(kernel_name="w2s-ci", kernel_spec_manager=ksm)


def run_notebook(name: str, tmp_path: pathlib.Path) -> nbformat.NotebookNode:
  """Executes ``colabs/<name>.ipynb``; raises on the first failing cell."""
  path = COLABS / f"{name}.ipynb"
  if not path.is_file():
    raise FileNotFoundError(f"notebook {path} is missing.")
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(
      nb,
      km=_kernel_manager(tmp_path),
      timeout=CELL_TIMEOUT_S,
      resources={"metadata": {"path": str(ROOT)}},
  )
  client.execute()
  return nb


def stream_text(nb: nbformat.NotebookNode) -> str:
  return "".join(
      o.get("text", "")
      for c in nb.cells
      if c.cell_type == "code"
      for o in c.get("outputs", [])
      if o.output_type == "stream" and o.get("name") == "stdout"
  )


def summary_of(nb: nbformat.NotebookNode) -> dict:
  lines = [l for l in stream_text(nb).splitlines() if l.startswith(SUMMARY)]
  assert len(lines) == 1, f"expected one {SUMMARY!r} line, got {len(lines)}"
  return json.loads(lines[0][len(SUMMARY) :])


def output_types(nb: nbformat.NotebookNode) -> set[str]:
  return {
      mime
      for c in nb.cells
      if c.cell_type == "code"
      for o in c.get("outputs", [])
      for mime in o.get("data", {})
  }


@pytest.mark.parametrize(
    "name",
    ["quickstart", "rsd_walkthrough", "losses_explorer", "real_checkpoint"],
)
def test_notebook_is_clean_and_starts_with_badge_and_hardware(name):
  nb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
  nbformat.validate(nb)
  first, second, third = nb.cells[:3]
  assert (
      first.cell_type == "markdown" and BADGE + f"{name}.ipynb" in first.source
  )
  assert second.cell_type == "code" and "jax.devices()" in second.source
  assert third.cell_type == "code" and '"google.colab" in sys.modules' in (
      third.source
  )
  for cell in nb.cells:  # committed without outputs
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, cell.source


def _kl(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.sum(a * np.log(a / b)))


def test_losses_explorer(tmp_path):
  s = summary_of(run_notebook("losses_explorer", tmp_path))
  p, q = np.asarray(s["p"], np.float64), np.asarray(s["q"], np.float64)
  beta, alpha = s["beta"], s["alpha"]
  m = beta * p + (1 - beta) * q
  want = (
      {  # docs/methods.md, "Divergences", float64, independent of the notebook
          "fkl": _kl(p, q),
          "rkl": _kl(q, p),
          "jsd": beta * _kl(p, m) + (1 - beta) * _kl(q, m),
          "skl": _kl(p, alpha * p + (1 - alpha) * q),
          "srkl": _kl(q, (1 - alpha) * p + alpha * q),
          "tvd": 0.5 * float(np.abs(p - q).sum()),
      }
  )
  assert set(s["divergences"]) == set(want)
  for name, value in want.items():
    np.testing.assert_allclose(s["divergences"][name], value, rtol=1e-5)
  # JSD(β) endpoints are exactly the two KLs.
  np.testing.assert_allclose(s["jsd_curve"]["0.0"], want["fkl"], rtol=1e-5)
  np.testing.assert_allclose(s["jsd_curve"]["1.0"], want["rkl"], rtol=1e-5)
  # Autodiff gradients match the printed closed forms; teacher gets none.
  assert set(s["grad_err"]) == {"fkl", "rkl", "tvd"}
  assert max(s["grad_err"].values()) < 1e-6, s["grad_err"]
  assert s["teacher_grad"] == 0.0
  # Mode covering vs seeking on the bimodal target (modes at -2 and +2).
  fwd, rev = s["fits"]["forward"], s["fits"]["reverse"]
  assert abs(fwd["mean"]) < 0.6 and fwd["std"] > 1.5, fwd
  assert abs(rev["mean"] - 2.0) < 0.3 and rev["std"] < 1.0, rev
  # k1/k3 unbiased for KL(q||p) (within 5 standard errors), k2 biased.
  rkl, n = s["true_rkl"], s["num_samples"]
  np.testing.assert_allclose(rkl, want["rkl"], rtol=1e-9)
  for est in ("k1", "k3"):
    e = s["estimators"][est]
    assert abs(e["mean"] - rkl) < 5 * e["std"] / np.sqrt(n), (est, e)
  assert s["estimators"]["k3"]["std"] < s["estimators"]["k1"]["std"]
  # Expected gradients: k1 -> 0, k2 -> grad RKL, k3 -> grad FKL (docs/methods.md, "Sampled-token estimators").
  assert max(s["estimator_grad_err"].values()) < 1e-6, s["estimator_grad_err"]


def test_rsd_walkthrough(tmp_path):
  nb = run_notebook("rsd_walkthrough", tmp_path)
  s = summary_of(nb)
  assert {"text/html", "image/png"} <= output_types(nb)
  acc = {float(k): v for k, v in s["acceptance_by_threshold"].items()}
  thresholds = sorted(acc)
  assert all(0.0 <= acc[t] <= 1.0 for t in thresholds), acc
  # A threshold above 1 rejects every proposal: the student writes it all.
  assert acc[thresholds[-1]] == 0.0 and thresholds[-1] > 1.0
  # Same contexts and the same key at every threshold: the proposals are
  # identical, so a pickier student can only accept fewer (exactly).
  assert acc[thresholds[0]] > 0.5, acc
  values = [acc[t] for t in thresholds]
  assert all(a >= b for a, b in zip(values, values[1:])), acc
  # Provenance bookkeeping, recomputed here from the per-token flags.
  lengths = np.asarray(s["lengths"])
  from_teacher = np.asarray(s["from_teacher"], bool)
  valid = np.arange(from_teacher.shape[1])[None] < lengths[:, None]
  assert not from_teacher[~valid].any()
  np.testing.assert_allclose(
      s["fallback_rate"],
      1.0 - (from_teacher & valid).sum(1) / np.maximum(lengths, 1),
      atol=1e-6,
  )
  by_pos = s["acceptance_by_position"]
  assert len(by_pos) == s["max_new_tokens"]
  for t, a in enumerate(by_pos):
    if valid[:, t].any():
      np.testing.assert_allclose(a, from_teacher[valid[:, t], t].mean())
    else:
      assert a is None


def test_quickstart(tmp_path):
  if not (ROOT / "configs" / "study.py").is_file():
    pytest.skip("configs/study.py (the study) is missing")
  nb = run_notebook("quickstart", tmp_path)
  s = summary_of(nb)
  assert s["spec"] == "configs/study.py:tiny"
  assert {"text/markdown", "image/png"} <= output_types(nb)
  shown = [
      o["data"]["text/markdown"]
      for c in nb.cells
      if c.cell_type == "code"
      for o in c.get("outputs", [])
      if "text/markdown" in o.get("data", {})
  ]
  assert s["table"].strip() in "".join(shown)
  table_rows = [l for l in s["table"].splitlines() if l.startswith("| ")][1:]
  assert len(table_rows) == len(s["rows"]) > 0
  groups = {r["group"] for r in s["rows"]}
  assert {"a", "b", "c", "d"} <= groups, groups
  for r in s["rows"]:
    for metric in ("pass@1", "greedy", "step_acc"):
      if metric in r:
        assert 0.0 <= r[metric] <= 1.0, r


def test_real_checkpoint_skips_cleanly_without_network(tmp_path, monkeypatch):
  missing = tmp_path / "no_such_checkpoint"
  # Hub ids that are not local directories: in CI the notebook never downloads.
  monkeypatch.setenv("W2S_MODEL_PATH", str(missing))
  monkeypatch.setenv("W2S_TEACHER_PATH", "Qwen/Qwen2.5-1.5B-Instruct")
  nb = run_notebook("real_checkpoint", tmp_path)
  assert summary_of(nb) == {
      "ready": False,
      "pass@1": None,
      "mean_fallback_rate": None,
  }
  assert "skipped: no network/checkpoint" in stream_text(nb)
  errors = [
      o
      for c in nb.cells
      if c.cell_type == "code"
      for o in c.get("outputs", [])
      if o.output_type == "error"
  ]
  assert not errors


def _tiny_checkpoint(path: pathlib.Path, seed: int, alphabet: str) -> str:
  """A random tiny Qwen2 HF checkpoint with a character tokenizer."""
  from w2s_jax import testing  # noqa: PLC0415
  from w2s_jax.data import char_vocab  # noqa: PLC0415

  hf = testing.make_hf_model(
      "qwen2", seed=seed, vocab_size=128, max_position_embeddings=1024
  )
  testing.save_hf_model(hf, str(path))
  char_vocab.save_char_tokenizer(path, alphabet)
  config_path = path / "tokenizer_config.json"
  config = json.loads(config_path.read_text())
  config["chat_template"] = (
      "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
  )
  config_path.write_text(json.dumps(config))
  return str(path)


@pytest.mark.slow
def test_real_checkpoint_runs_on_local_checkpoints(tmp_path, monkeypatch):
  from w2s_jax.data import char_vocab  # noqa: PLC0415
  from w2s_jax.evals import datasets  # noqa: PLC0415

  questions = [r["question"] for r in datasets.load_gsm8k("test")]
  alphabet = char_vocab.alphabet_of(questions + ["0123456789#\\boxed{}"])
  assert len(alphabet) + 4 <= 128
  monkeypatch.setenv(
      "W2S_MODEL_PATH", _tiny_checkpoint(tmp_path / "s", 0, alphabet)
  )
  monkeypatch.setenv(
      "W2S_TEACHER_PATH", _tiny_checkpoint(tmp_path / "t", 1, alphabet)
  )
  nb = run_notebook("real_checkpoint", tmp_path)
  s = summary_of(nb)
  assert s["ready"] is True
  assert 0.0 <= s["pass@1"] <= 1.0
  assert 0.0 <= s["mean_fallback_rate"] <= 1.0
  assert {"text/html", "image/png"} <= output_types(nb)
