"""The method registry: every method is one spec, found by name, whose typed
hyperparameters are checked when the config loads; nothing outside
w2s_jax/methods/ (package or configs) compares a method's name with a
string."""

import os
import re
import subprocess
import sys

import pytest

from w2s_jax import config_lib, methods

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
OFFLINE = ("distill", "distill_cache", "dpo", "redi", "sft", "simpo", "ssb")

# `method == "x"`, `cfg.method in ("a", "b")`, `method_name != 'x'`, the old
# name lists, and `"x" == method`.
_NAME = r"(?<!\w)(?:\w+\.)*method(?:_name)?\b"
_PATTERNS = [
    re.compile(_NAME + r"\s*[!=]=\s*[\"']"),
    re.compile(r"[\"']\s*[!=]=\s*" + _NAME),
    re.compile(_NAME + r"\s+(not\s+)?in\s+[(\[{\"']"),
    re.compile(_NAME + r"\s+(not\s+)?in\s+[\w.]*METHODS\b"),
    re.compile(r"\b(PAIR|CACHE|POLICY)_METHODS\b|\b_METHOD_CHECKS\b"),
]


def _comparisons():
  found = []
  tops = [os.path.join(ROOT, d) for d in ("w2s_jax", "configs")]
  for top, _, files in (w for t in tops for w in sorted(os.walk(t))):
    for name in sorted(files):
      path = os.path.relpath(os.path.join(top, name), ROOT)
      if not name.endswith(".py") or path.startswith("w2s_jax/methods/"):
        continue
      with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
          code = line.split("#", 1)[0]
          if any(p.search(code) for p in _PATTERNS):
            found.append((path, i, line.strip()))
  return found


def test_no_method_name_comparisons_outside_the_registry():
  bad = [f"{p}:{i}: {s}" for p, i, s in _comparisons()]
  assert not bad, "compare spec fields, not names:\n" + "\n".join(bad)


def test_the_scan_finds_what_it_forbids(tmp_path):
  lines = [
      'if config.method == "dpo":',
      "if method_name != 'gkd':",
      'if cfg.method in ("dpo", "simpo"):',
      "elif config.method in steps.CACHE_METHODS:",
      'kind = "ssb" == method',
  ]
  for line in lines:
    assert any(p.search(line) for p in _PATTERNS), line
  for line in ['if spec.data == "pairs":', "if start_method not in x:"]:
    assert not any(p.search(line) for p in _PATTERNS), line


def test_every_offline_method_is_registered_with_checked_defaults():
  assert set(OFFLINE) <= set(methods.names("train"))
  for name in OFFLINE:
    spec = methods.get(name, job="train")
    assert spec.name == name and spec.job == "train"
    hp = spec.hp(None)  # the defaults pass their own checks
    assert isinstance(hp, spec.hparams) and hp.vocab_size == 0
    assert spec.doc.startswith("docs/methods.md#")
    assert spec.data in ("tokens", "pairs", "topk")
    # The config of the method builds its loss section from the same class.
    assert set(spec.hparams.keys()) >= {"vocab_size", "chunk_size"}


@pytest.mark.parametrize(
    "config,method",
    [
        ("sft.py", "sft"),
        ("distill.py", "distill"),
        ("distill.py:topk_cache=x", "distill_cache"),
        ("redi.py", "redi"),
        ("dpo.py", "dpo"),
        ("simpo.py", "simpo"),
        ("ssb.py", "ssb"),
    ],
)
def test_each_config_loss_section_is_its_methods_hparams(config, method):
  cfg = config_lib.load(os.path.join(ROOT, "configs", config))
  spec = methods.get(cfg.method)
  assert cfg.method == method
  assert sorted(cfg.loss.keys()) == sorted(spec.hparams.keys())
  config_lib.validate(cfg)
  # A misspelt override fails before the flags are applied.
  with pytest.raises(ValueError, match=r"unknown config key 'loss.temprature'"):
    config_lib.check_override_keys(cfg, ["--config.loss.temprature=2"])


def test_unknown_name_and_wrong_job_are_named():
  with pytest.raises(ValueError, match=r"method='ppo' is unknown.*'sft'"):
    methods.get("ppo")
  with pytest.raises(ValueError, match=r"'sft' runs as job 'train'.*job=train"):
    methods.get("sft", job="rl")


def test_unknown_loss_key_names_the_method_and_its_keys():
  with pytest.raises(methods.HparamError) as e:
    methods.get("dpo").hp({"beta": 0.1, "gamma": 1.0})
  msg = str(e.value)
  assert "loss.gamma" in msg and "'dpo'" in msg, msg
  assert "['beta', 'chunk_size', 'vocab_size']" in msg, msg


def test_out_of_range_value_names_the_bound_at_validate():
  cfg = config_lib.load(os.path.join(ROOT, "configs", "simpo.py"))
  cfg.loss.beta = 0.0
  with pytest.raises(
      methods.HparamError, match=r"loss.beta=0.0 .*'simpo'.*> 0"
  ):
    config_lib.validate(cfg)


def test_cli_out_of_range_hparam_exits_2_with_one_line(tmp_path):
  proc = subprocess.run(
      [
          sys.executable, "-m", "w2s_jax.main",
          "--config=configs/dpo.py:runlocal", "--config.loss.beta=-1",
          f"--workdir={tmp_path / 'w'}",
      ],
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
      capture_output=True,
      text=True,
      timeout=300,
  )  # fmt: skip
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines == [
      "error: config value loss.beta=-1.0 is invalid for method 'dpo': it must"
      " be > 0 (the preference temperature); fix it with"
      " --config.loss.beta=..."
  ], proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "w")


def test_validating_a_config_starts_no_device():
  """main validates before jax.distributed.initialize, which must come
  before anything starts an XLA backend: importing the methods must not."""
  code = (
      "from jax._src import xla_bridge as xb\n"
      "from w2s_jax import config_lib\n"
      "config_lib.validate(config_lib.load('configs/ssb.py:runlocal'))\n"
      "print(bool(xb._backends))\n"
  )
  proc = subprocess.run(
      [sys.executable, "-c", code],
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "False", proc.stdout


def _anchor(heading: str) -> str:
  """GitHub's anchor of a markdown heading."""
  text = heading.strip().lstrip("#").strip().lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_spec_cites_a_section_of_docs_methods_and_a_paper():
  with open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8") as f:
    anchors = {_anchor(line) for line in f if line.startswith("## ")}
  for name in methods.names():
    spec = methods.get(name)
    doc = spec.doc
    assert doc.startswith("docs/methods.md#"), (name, doc)
    assert doc.split("#", 1)[1] in anchors, (name, doc, sorted(anchors))
    assert re.fullmatch(r"\d{4}\.\d{4,5}", spec.paper), (name, spec.paper)
