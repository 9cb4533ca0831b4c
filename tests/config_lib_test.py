"""Config parsing, override-key checks, validation and workdir checks."""

import json
import os

import pytest

from w2s_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")
)


def test_parse_arg_types_and_flags():
  a = config_lib.parse_arg(
      "n=3,lr=0.5,name=x,runlocal", n=1, lr=0.1, name="", runlocal=False
  )
  assert (a.n, a.lr, a.name, a.runlocal) == (3, 0.5, "x", True)


def test_parse_arg_unknown_key():
  with pytest.raises(
      ValueError, match=r"unknown config argument 'lss'.*known arguments"
  ):
    config_lib.parse_arg("lss=rkl", loss="fkl")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_validates(name):
  # Every config has a CPU-sized argument: 'runlocal', or 'tiny' for the study.
  small = "tiny" if name == "study.py" else "runlocal"
  cfg = config_lib.load(os.path.join(ROOT, "configs", name) + ":" + small)
  config_lib.validate(cfg)
  assert cfg.job


def test_override_keys_are_checked():
  cfg = config_lib.load(os.path.join(ROOT, "configs", "sft.py"))
  config_lib.check_override_keys(cfg, ["--config.optim.lr=1", "--workdir=x"])
  with pytest.raises(
      ValueError, match=r"unknown config key 'optim.lrr'.*'optim.lr'"
  ):
    config_lib.check_override_keys(cfg, ["--config.optim.lrr=1"])
  with pytest.raises(ValueError, match=r"unknown config key 'bogus'"):
    config_lib.check_override_keys(cfg, ["--config.bogus=1"])


@pytest.mark.parametrize(
    "key,value,msg",
    [
        (
            "optim.lr",
            -1e-3,
            r"optim.lr=-0.001 is invalid: it must be a learning rate >= 0",
        ),
        (
            "loss.beta",
            1.5,
            r"loss.beta=1.5 is invalid for method 'distill': it must be in"
            r" \[0, 1\]",
        ),
        (
            "loss.temperature",
            0.0,
            r"loss.temperature=0.0 is invalid for method 'distill': it must be"
            r" > 0",
        ),
        ("train.batch_size", 0, r"train.batch_size=0 is invalid"),
    ],
)
def test_validate_rejects_out_of_range(key, value, msg):
  cfg = config_lib.load(os.path.join(ROOT, "configs", "distill.py"))
  section, leaf = key.split(".")
  cfg[section][leaf] = value
  with pytest.raises(ValueError, match=msg):
    config_lib.validate(cfg)


def test_dpo_beta_must_be_positive_not_unit():
  cfg = config_lib.load(os.path.join(ROOT, "configs", "simpo.py"))
  cfg.loss.beta = 2.5  # fine for SimPO
  config_lib.validate(cfg)
  cfg.loss.beta = -1.0
  with pytest.raises(
      ValueError,
      match=r"loss.beta=-1.0 is invalid for method 'simpo': it must be > 0",
  ):
    config_lib.validate(cfg)


def test_save_resolved_is_json(tmp_path):
  cfg = config_lib.load(os.path.join(ROOT, "configs", "sft.py"))
  path = config_lib.save_resolved(cfg, str(tmp_path))
  assert json.load(open(path))["method"] == "sft"
  assert [p for p in os.listdir(tmp_path) if p.startswith(".config")] == []


def test_prepare_workdir_under_a_file(tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(NotADirectoryError, match=r"--workdir .* is a file"):
    config_lib.prepare_workdir(str(tmp_path / "f" / "w"))


@pytest.mark.parametrize(
    "arg,key,value,what",
    [
        ("rsd", "sample.rsd_num_proposals", 0, "an integer >= 1"),
        ("rsd", "sample.rsd_top_k", -3, "an integer >= 1"),
        ("rsd", "sample.rsd_threshold", 1.5, "a probability in [0, 1]"),
        ("rsd", "sample.temperature", 0.0, "> 0 for RSD"),
        ("rsd", "sample.max_fallback_rate", -0.1, "in [0, 1]"),
        ("", "sample.batch_size", 0, "an integer >= 1"),
        ("", "sample.num_problems", 0, "an integer >= 1"),
        ("", "sample.keep", "best", "'shortest' or 'all'"),
        ("", "sample.top_p", 0.0, "in (0, 1]"),
        ("", "sample.temperature", -1.0, ">= 0 (0 = greedy)"),
    ],
)
def test_sampling_and_rsd_keys_are_range_checked_at_load(arg, key, value, what):
  cfg = config_lib.load(os.path.join(ROOT, "configs", "sample.py") + ":" + arg)
  config_lib.validate(cfg)  # the defaults are valid
  config_lib.set_keys(cfg, {key: value})
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg)
  assert str(e.value) == (
      f"config value {key}={value!r} is invalid: it must be {what}; fix it"
      f" with --config.{key}=..."
  )


def test_greedy_plain_sampling_is_valid():
  cfg = config_lib.load(os.path.join(ROOT, "configs", "sample.py"))
  cfg.sample.temperature = 0.0
  config_lib.validate(cfg)
