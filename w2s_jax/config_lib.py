"""Config helpers: big_vision-style ``get_config(arg)``, loading, validation.

A config file ``configs/<name>.py`` defines ``get_config(arg=None)``; the
structural choices come through ``arg`` (``distill.py:loss=rkl,runlocal``),
scalars through ``--config.key=value`` overrides. Configs are locked, and
every key and value is checked when the config is loaded, so a typo fails
before any model is built.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections


def parse_arg(
    arg: str | None, lazy: bool = False, **spec: Any
) -> ml_collections.ConfigDict:
  """Parses ``"a=1,b=x,flag"`` into a ConfigDict typed after ``spec``.

  Args:
    arg: the string after ``:`` in ``--config=file.py:arg``.
    lazy: accept keys that are not in ``spec`` (as strings).
    **spec: the known keys with their defaults; values are cast to the type
      of the default (bare names set booleans to True).
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = item.partition("=")
    if key not in spec and not lazy:
      raise ValueError(
          f"unknown config argument {key!r} in {arg!r}; known arguments:"
          f" {sorted(spec)}."
      )
    default = spec.get(key)
    if not eq:
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} must be true/false.")
      out[key] = value.lower() in ("true", "1")
    elif isinstance(default, int):
      out[key] = int(value)
    elif isinstance(default, float):
      out[key] = float(value)
    else:
      out[key] = value
  return out


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path/to/config.py[:arg]`` (the same syntax as ``--config``)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"config file {path!r} not found; pass --config=configs/<name>.py."
    )
  module_spec = importlib.util.spec_from_file_location("_w2s_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _paths(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in cfg.items():
    p = f"{prefix}{k}"
    out.append(p)
    if isinstance(v, ml_collections.ConfigDict):
      out.extend(_paths(v, p + "."))
  return out


def check_override_keys(
    cfg: ml_collections.ConfigDict, argv: Sequence[str]
) -> None:
  """Fails with a readable message on ``--config.<unknown>=...``."""
  known = set(_paths(cfg))
  for a in argv:
    if not a.startswith("--config."):
      continue
    key = a[len("--config.") :].split("=", 1)[0]
    if key not in known:
      parent = key.rsplit(".", 1)[0] if "." in key else ""
      siblings = (
          sorted(p for p in known if p.rsplit(".", 1)[0] == parent and "." in p)
          if parent
          else sorted(p for p in known if "." not in p)
      )
      raise ValueError(
          f"unknown config key {key!r} in {a!r}; valid keys"
          f"{' under ' + parent if parent else ''}: {siblings}."
      )


# (dotted key, predicate, what the value must be). Keys absent from a config
# are skipped, so one table serves every method.
Check = tuple[str, Callable[[Any], bool], str]


def _in01(x):
  return 0.0 <= float(x) <= 1.0


def _pos(x):
  return float(x) > 0


def _nonneg(x):
  return float(x) >= 0


def _int_at_least(lo: int) -> Callable[[Any], bool]:
  def ok(x):
    return not isinstance(x, bool) and int(x) == x and int(x) >= lo

  return ok


CHECKS: list[Check] = [
    ("optim.lr", _nonneg, "a learning rate >= 0"),
    ("optim.weight_decay", _nonneg, ">= 0"),
    ("optim.grad_clip", _nonneg, ">= 0 (0 disables clipping)"),
    ("optim.warmup_frac", _in01, "in [0, 1]"),
    ("optim.b1", lambda x: 0 <= x < 1, "in [0, 1)"),
    ("optim.b2", lambda x: 0 <= x < 1, "in [0, 1)"),
    ("train.steps", lambda x: int(x) >= 0, ">= 0"),
    ("distributed", lambda x: x in ("auto", "on", "off"), "auto, on or off"),
    ("num_processes", lambda x: int(x) >= 0, ">= 0 (0 = detect)"),
    ("process_id", lambda x: int(x) >= -1, ">= 0, or -1 to detect"),
    (
        "initialization_timeout",
        lambda x: int(x) >= 0,
        ">= 0 seconds (0 = default)",
    ),
    ("train.batch_size", lambda x: int(x) > 0, "> 0"),
    ("train.micro_batches", lambda x: int(x) > 0, "> 0"),
    ("train.save_every", lambda x: int(x) > 0, "> 0"),
    ("train.keep", lambda x: int(x) > 0, "> 0"),
    ("data.max_len", lambda x: int(x) > 1, "> 1"),
    ("data.fact_error_rate", _in01, "in [0, 1]"),
    ("data.slip_prob", _in01, "in [0, 1]"),
    ("lora.rank", lambda x: int(x) >= 0, ">= 0 (0 disables LoRA)"),
    ("eval.n", lambda x: int(x) > 0, "> 0"),
    ("eval.temperature", _nonneg, ">= 0 (0 = greedy)"),
    ("eval.top_p", lambda x: 0 < x <= 1, "in (0, 1]"),
    ("eval.max_new_tokens", lambda x: int(x) > 0, "> 0"),
    ("sample.temperature", _nonneg, ">= 0 (0 = greedy)"),
    ("sample.top_p", lambda x: 0 < x <= 1, "in (0, 1]"),
    ("sample.num_samples", _int_at_least(1), "an integer >= 1"),
    ("sample.max_new_tokens", _int_at_least(1), "an integer >= 1"),
    ("sample.batch_size", _int_at_least(1), "an integer >= 1"),
    ("sample.num_problems", _int_at_least(1), "an integer >= 1"),
    ("sample.k", _int_at_least(1), "an integer >= 1"),
    ("sample.max_fallback_rate", _in01, "in [0, 1]"),
    ("sample.keep", lambda x: x in ("shortest", "all"), "'shortest' or 'all'"),
    (
        "sample.dataset",
        lambda x: x in ("synthetic", "gsm8k", "math500"),
        "'synthetic', 'gsm8k' or 'math500'",
    ),
    # Reverse speculative decoding (job 'rsd'; decoding.rsd_rule.RSDParams).
    ("sample.rsd_threshold", _in01, "a probability in [0, 1]"),
    ("sample.rsd_num_proposals", _int_at_least(1), "an integer >= 1"),
    ("sample.rsd_top_k", _int_at_least(1), "an integer >= 1"),
    ("eval.batch_size", _int_at_least(1), "an integer >= 1"),
    # RL (job 'rl': grpo, kdrl, ampo, gkd).
    ("rl.group_size", lambda x: int(x) >= 1, ">= 1"),
    ("rl.prompts_per_step", lambda x: int(x) >= 1, ">= 1"),
    ("rl.max_new_tokens", lambda x: int(x) > 0, "> 0"),
    ("rl.temperature", _pos, "> 0 (RL samples; greedy rollouts are identical)"),
    ("rl.top_p", lambda x: 0 < x <= 1, "in (0, 1]"),
    ("rl.updates_per_rollout", lambda x: int(x) >= 1, ">= 1"),
    ("rl.eps", _nonneg, ">= 0"),
    ("rl.max_resample_batches", lambda x: int(x) >= 0, ">= 0"),
    ("rl.overlong_buffer", lambda x: int(x) >= 0, ">= 0 (0 disables it)"),
    ("rl.overlong_factor", _nonneg, ">= 0"),
    ("rl.reward_timeout_s", _pos, "> 0 seconds"),
    ("rl.reward_workers", lambda x: int(x) >= 0, ">= 0 (0 = in-process)"),
    ("rl.ampo_max_teachers", lambda x: int(x) >= 1, ">= 1"),
    ("rl.tis_cap", lambda x: x == 0 or x > 1, "0 (off) or a cap C > 1"),
    (
        "rl.sample_dtype",
        lambda x: x in ("", "float32", "bfloat16", "float16"),
        "'' (the policy's weights), 'float32', 'bfloat16' or 'float16'",
    ),
    (
        "rl.reward",
        lambda x: x in ("correct", "surrogate", "format", "ampo", "fn"),
        "one of 'correct', 'surrogate', 'format', 'ampo', 'fn'",
    ),
    (
        "rl.task",
        lambda x: x in ("synthetic", "gsm8k", "math"),
        "one of 'synthetic', 'gsm8k', 'math'",
    ),
]


# Model run-time keys (the sets of w2s_jax.models.config, kept jax-free here;
# tests/config_lib_test checks they agree). '' keeps the preset's value.
_REMAT = ("", "none", "block", "dots", "dots_saveable")
_ATTENTION = ("", "auto", "xla", "cudnn", "pallas")
_PRECISION = ("", "default", "high", "highest")
for _section in ("student", "teacher", "model"):
  CHECKS += [
      (
          f"{_section}.overrides.remat",
          lambda x: x in _REMAT,
          f"one of {_REMAT}",
      ),
      (
          f"{_section}.overrides.attention",
          lambda x: x in _ATTENTION,
          f"one of {_ATTENTION} (the platform is checked at model build)",
      ),
      (
          f"{_section}.overrides.matmul_precision",
          lambda x: x in _PRECISION,
          f"one of {_PRECISION} ('' = highest for float32, default for bf16)",
      ),
  ]


def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
  node = cfg
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def validate(
    cfg: ml_collections.ConfigDict, extra: Sequence[Check] = ()
) -> None:
  """Range-checks every known key present in ``cfg``.

  A config with a ``method`` has its ``loss`` section checked by the
  method's typed hyperparameters (``w2s_jax.methods``): a key the method
  lacks or a value out of its bound raises ``methods.HparamError`` naming
  the method, the key and the bound.
  """
  _validate_method(cfg)
  checks = list(CHECKS)
  if _get(cfg, "job") == "rl":
    _validate_rl(cfg)
  if _get(cfg, "job") == "rsd":
    # RSD samples from both models: greedy (0) is not a distribution.
    checks.append(("sample.temperature", _pos, "> 0 for RSD"))
  for key, ok, what in [*checks, *extra]:
    value = _get(cfg, key)
    if value is _MISSING or value is None:
      continue
    try:
      good = ok(value) and not (isinstance(value, float) and math.isnan(value))
    except (TypeError, ValueError):
      good = False
    if not good:
      raise ValueError(
          f"config value {key}={value!r} is invalid: it must be {what}; fix it"
          f" with --config.{key}=..."
      )


def _validate_method(cfg: ml_collections.ConfigDict) -> None:
  """``methods.get(cfg.method).hp(cfg.loss)``: the method's own checks."""
  name = _get(cfg, "method")
  if name is _MISSING or name is None:
    return
  from w2s_jax import methods  # noqa: PLC0415  (imports jax)

  job = _get(cfg, "job")
  job = "train" if job is _MISSING else str(job)
  # Training jobs run the method: an unknown name, or a method of the other
  # trainer, names the choices. Data jobs (topk_cache, ssb_data) built from
  # a method's config check its loss section too.
  spec = methods.get(str(name), job=job if job in ("train", "rl") else None)
  loss = _get(cfg, "loss")
  spec.hp(None if loss is _MISSING else loss)


def _validate_rl(cfg: ml_collections.ConfigDict) -> None:
  """Cross-key checks of an RL config (ranges are in CHECKS; the loss's
  are the method's Hparams.check, w2s_jax/methods/)."""
  g, std = _get(cfg, "rl.group_size"), _get(cfg, "rl.std_normalize")
  if std is True and g is not _MISSING and int(g) < 2:
    raise ValueError(
        f"config value rl.group_size={g} is invalid with rl.std_normalize=True:"
        " the group std (ddof=1) needs at least 2 rollouts per prompt; fix it"
        " with --config.rl.group_size=8 (or --config.rl.std_normalize=False)."
    )
  buf, t = _get(cfg, "rl.overlong_buffer"), _get(cfg, "rl.max_new_tokens")
  if buf is not _MISSING and t is not _MISSING and int(buf) > int(t):
    raise ValueError(
        f"config value rl.overlong_buffer={buf} exceeds rl.max_new_tokens={t};"
        " fix it with --config.rl.overlong_buffer=<= max_new_tokens (0 = off)."
    )


def set_keys(cfg: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
  """Sets ``{'a.b.c': v}`` as ``cfg.a.b.c = v``; unknown keys raise KeyError."""
  for key, value in values.items():
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise KeyError(
            f"config has no section {'.'.join(parents[: i + 1])!r} (setting"
            f" {key!r})."
        )
      node = node[part]
    if leaf not in node:
      raise KeyError(
          f"config has no key {key!r}; valid keys there: {sorted(node.keys())}."
      )
    node[leaf] = value


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` or fails with a message naming it."""
  path = os.path.abspath(workdir)
  probe = path
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if probe and not os.path.isdir(probe):
    raise NotADirectoryError(
        f"--workdir {workdir!r} cannot be created: {probe!r} is a file."
    )
  try:
    os.makedirs(path, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".write_test.")
    os.close(fd)
    os.remove(tmp)
  except OSError as e:
    raise PermissionError(
        f"--workdir {workdir!r} is not writable ({e.strerror}); choose a"
        " directory you can write to."
    ) from e
  return path


def save_resolved(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config to ``workdir/config.json`` atomically."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".config.", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(cfg.to_dict(), f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
  return path


# The synthetic task's difficulty knobs (data.synthetic_task.TaskConfig).
SYNTHETIC_TASK = dict(modulus=11, ops="+*", steps=2, distractors=0)


def io_data_section(tokenizer: str, dataset: str) -> ml_collections.ConfigDict:
  """The ``data`` section of the sampling/eval jobs."""
  return ml_collections.ConfigDict(
      dict(
          tokenizer=tokenizer or "char",
          prompt_format="raw" if dataset == "synthetic" else "chat",
      )
  )


def model_section(
    preset: str = "tiny-qwen2",
    hf_path: str = "",
    seed: int = 0,
    **overrides: Any,
) -> ml_collections.ConfigDict:
  """A student/teacher section: a local HF dir, or a preset (+ overrides)."""
  keys = (
      "vocab_size",
      "d_model",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "head_dim",
      "mlp_dim",
      "max_len",
      "remat",
      "attention",
      "matmul_precision",
      "scan_layers",
  )
  # 0 / "" / False mean "keep the preset's value" (None cannot be set from
  # the CLI).
  defaults = dict(
      remat="", attention="", matmul_precision="", scan_layers=False
  )
  ov = {k: overrides.pop(k, defaults.get(k, 0)) for k in keys}
  if overrides:
    raise ValueError(f"unknown model overrides {sorted(overrides)}.")
  return ml_collections.ConfigDict(
      dict(
          preset=preset,
          hf_path=hf_path,
          # A tokenizer of this model's own, checked against data.tokenizer
          # ('' = the model uses data.tokenizer).
          tokenizer="",
          seed=seed,
          dtype="float32",
          overrides=ml_collections.ConfigDict(ov),
      ),
  )


def train_config(method: str) -> ml_collections.ConfigDict:
  """The shared skeleton of every training config (big_vision style)."""
  c = ml_collections.ConfigDict()
  c.job = "train"
  c.method = method
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  # Multi-process start-up (w2s_jax/distributed.py): 'auto' | 'on' | 'off';
  # '' / 0 / -1 leave the coordinates to jax's SLURM/TPU detection.
  c.distributed = "auto"
  c.coordinator_address = ""
  c.num_processes = 0
  c.process_id = -1
  c.initialization_timeout = (
      0  # seconds; 0 = $JAX_INITIALIZATION_TIMEOUT or 300
  )
  c.student = model_section()
  c.teacher = model_section(seed=1)
  c.data = ml_collections.ConfigDict(
      dict(
          source="synthetic",
          path="",
          tokenizer="char",
          prompt_format="raw",
          filter="all",
          on_error="raise",
          max_len=48,
          pack=False,
          num_examples=512,
          split="train",
          style="terse",
          **SYNTHETIC_TASK,
          # Synthetic weak teacher: a perturbed fact table and random slips.
          fact_error_rate=0.0,
          slip_prob=0.0,
          error_seed=0,
      )
  )
  c.optim = ml_collections.ConfigDict(
      dict(
          lr=1e-3,
          schedule="cosine",
          warmup_steps=0,
          warmup_frac=0.0,
          min_lr_ratio=0.0,
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          weight_decay=0.0,
          grad_clip=1.0,
      )
  )
  c.train = ml_collections.ConfigDict(
      dict(
          steps=100,
          batch_size=32,
          micro_batches=1,
          log_every=10,
          eval_every=0,
          save_every=100,
          keep=2,
          tensorboard=True,
          export=True,
          # Fault injection (tests): send debug_kill_signal to this process
          # after step debug_kill_at (0 = never).
          debug_kill_at=0,
          debug_kill_signal="SIGKILL",
      )
  )
  c.loss = ml_collections.ConfigDict(
      dict(vocab_size=0, chunk_size=0), type_safe=False
  )
  c.lora = ml_collections.ConfigDict(
      dict(
          rank=0,
          alpha=16.0,
          targets=(
              "q_DNH",
              "k_DKH",
              "v_DKH",
              "o_NHD",
              "gate_DF",
              "up_DF",
              "down_FD",
          ),
      )
  )
  return c
