"""Every command in README.md is exercised: here (configs) or by CI (make).

* Each ``python -m w2s_jax.main --config=SPEC ... [--config.KEY=VALUE]`` in a
  fenced bash block: the config file exists, loads with its arguments,
  every override names a real key, takes a value of the key's type, and the
  result passes ``config_lib.validate`` (what ``main`` checks before any
  model is built). No training runs.
* ``make demo`` / ``make test`` are the CI commands; ``make test`` runs this
  suite, including the notebooks (tests/colabs/notebooks_test.py).
* Every other command and link names a file that exists; every config in
  configs/ has a row in the configs reference; every public name the API
  section uses exists.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import shlex

import ml_collections
import pytest

from w2s_jax import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(text: str, lang: str) -> list[str]:
  return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def bash_commands(text: str) -> list[str]:
  """Commands of the README's bash blocks, continuations joined, comments cut."""
  out = []
  for block in _blocks(text, "bash"):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
      line = line.split("  #", 1)[0].strip()
      if line and not line.startswith("#"):
        out.append(line)
  return out


def main_commands(text: str) -> list[list[str]]:
  return [shlex.split(c) for c in bash_commands(text) if "-m w2s_jax.main" in c]


def _cast(value: str, current):
  if isinstance(current, bool):
    if value.lower() not in ("true", "false"):
      raise ValueError(f"{value!r} is not a bool")
    return value.lower() == "true"
  if isinstance(current, int):
    return int(value)
  if isinstance(current, float):
    return float(value)
  if isinstance(current, tuple):
    return tuple(ast.literal_eval(value))
  return value


def load_command(argv: list[str]) -> ml_collections.ConfigDict:
  """Loads and overrides a config exactly as the README command would."""
  spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  assert any(a.startswith("--workdir=") for a in argv), argv
  path = spec.partition(":")[0]
  assert (ROOT / path).is_file(), f"{path} (in {argv}) does not exist"
  cfg = config_lib.load(str(ROOT / spec))
  config_lib.check_override_keys(cfg, argv)
  for a in argv:
    if a.startswith("--config."):
      key, value = a[len("--config.") :].split("=", 1)
      *parents, leaf = key.split(".")
      node = cfg
      for part in parents:
        node = node[part]
      node[leaf] = _cast(value, node[leaf])
  config_lib.validate(cfg)
  return cfg


@pytest.fixture(scope="module")
def text() -> str:
  return README.read_text()


@pytest.fixture(scope="module", autouse=True)
def _repo_root(monkeypatch_module):
  # Config specs are relative to the repo root (configs/x.py:...).
  monkeypatch_module.chdir(ROOT)


@pytest.fixture(scope="module")
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


def test_readme_has_the_issue_sections(text):
  for heading in (
      "## Install",
      "## Quickstart",
      "## Notebooks",
      "## The study",
      "## Concepts: which method is which paper",
      "### Configs reference",
      "## Scaling",
      "## Public API",
      "## Adding a method",
  ):
    assert heading in text, heading
  # The measured study tables sit in their section: one row group per arm
  # group, and a verdict per claim.
  study = text.split("## The study", 1)[1].split("\n## ", 1)[0]
  assert "| group | model | answer acc (any notation) |" in study
  for group in ("baselines", "(a) W2SR", "(b) RSD", "(c) ", "(d) "):
    assert f"\n| {group}" in study, group
  assert "| claim (expected) |" in study


def test_every_main_command_loads_and_validates(text):
  commands = main_commands(text)
  assert len(commands) >= 15, len(commands)
  for argv in commands:
    assert argv[:3] == ["python", "-m", "w2s_jax.main"], argv
    cfg = load_command(argv)
    assert "job" in cfg, argv


def test_readme_overrides_are_applied(text):
  kd = next(c for c in main_commands(text) if "loss=rkl" in " ".join(c))
  cfg = load_command(kd)
  assert cfg.loss.divergence == "rkl" and cfg.loss.temperature == 2.0
  gkd = next(c for c in main_commands(text) if "configs/gkd.py" in " ".join(c))
  assert load_command(gkd).loss.lambda_on_policy == 1.0


def test_a_typo_in_an_override_would_be_caught():
  argv = [
      "python",
      "-m",
      "w2s_jax.main",
      "--config=configs/distill.py:runlocal",
      "--workdir=/tmp/x",
      "--config.loss.temprature=2.0",
  ]
  with pytest.raises(ValueError, match="unknown config key 'loss.temprature'"):
    load_command(argv)
  argv[-1] = "--config.loss.beta=1.5"
  with pytest.raises(ValueError, match=r"loss.beta=1.5 is invalid"):
    load_command(argv)


def test_other_commands_name_existing_files(text):
  others = [c for c in bash_commands(text) if "-m w2s_jax.main" not in c]
  assert "make demo" in others and "make test" in others
  makefile = (ROOT / "Makefile").read_text()
  for target in ("demo:", "test:"):
    assert re.search(rf"^{target}", makefile, re.M), target
  scripts = [
      tok for c in others for tok in shlex.split(c) if tok.endswith(".py")
  ]
  assert scripts
  for s in scripts:
    assert (ROOT / s).is_file(), s


def test_links_and_paths_exist(text):
  links = re.findall(r"\]\(((?:docs|colabs)/[^)#]+)\)", text)
  assert any(l.startswith("colabs/") for l in links)
  for link in links:
    assert (ROOT / link).is_file(), link
  for path in re.findall(r"`((?:launch|tests/bench)/[\w./-]+)`", text):
    assert (ROOT / path).exists(), path


def test_configs_reference_covers_every_config(text):
  reference = text.split("### Configs reference", 1)[1].split("\n## ", 1)[0]
  for f in sorted((ROOT / "configs").glob("*.py")):
    if f.name.startswith("_"):
      continue
    assert f"| `{f.name}` |" in reference, f"{f.name} has no row"
    # And the arguments documented for it are real ones.
    cfg = config_lib.load(str(f))
    assert "job" in cfg, f.name


def test_public_api_names_exist(text):
  api = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
  code = "\n".join(_blocks(api, "python"))
  import w2s_jax  # noqa: PLC0415

  modules = {
      "w2s_jax": w2s_jax,
      "losses": importlib.import_module("w2s_jax.losses"),
      "config_lib": config_lib,
      "main": importlib.import_module("w2s_jax.main"),
  }
  used = re.findall(r"\b(w2s_jax|losses|config_lib|main)\.(\w+)\(", code)
  assert len(used) >= 15
  for mod, name in used:
    assert hasattr(modules[mod], name), f"{mod}.{name}"
  from w2s_jax.decoding import generation  # noqa: PLC0415

  out_cls = generation.RSDGenerateOutput
  for name in ("from_teacher", "fallback_rate", "acceptance_by_position"):
    assert name in out_cls.__dataclass_fields__ or hasattr(out_cls, name), name
