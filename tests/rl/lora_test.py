"""LoRA in RL: adapters on the policy, the base (adapters off) as reference.

Zero-initialised B: the step-0 policy is the full model exactly; the base
weights never change; checkpoints hold adapters + optimizer state only; the
export is the merged model; resume is exact.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from w2s_jax import config_lib, main, methods, sharding, testing
from w2s_jax.methods import grpo
from w2s_jax.models import config as model_config
from w2s_jax.models import hf_io, transformer
from w2s_jax.rl import learner, rollouts, scoring
from w2s_jax.training import inputs, lora, metrics, steps

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
G, N, P, T = 4, 2, 3, 5
B = G * N
RANK, ALPHA = 4, 16.0


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  prompt = rng.integers(4, 40, size=(B, P)).astype(np.int32)
  seg = np.ones((B, P), np.int32)
  comp = rng.integers(4, 40, size=(B, T)).astype(np.int32)
  batch = rollouts._assemble(prompt, seg, comp, rng.integers(1, T + 1, B))  # noqa: SLF001
  batch["advantages"] = rng.normal(size=B).astype(np.float32)
  batch["correct"] = np.zeros(B, np.float32)
  batch["off_policy"] = np.zeros(B, np.float32)
  batch["kd_beta"] = np.zeros(B, np.float32)
  return {k: jnp.asarray(v) for k, v in batch.items()}


def test_zero_b_policy_is_the_full_model_and_the_base_never_changes():
  mcfg = model_config.get_config(
      "tiny-qwen2", d_model=32, num_layers=1, mlp_dim=64, vocab_size=40
  )
  graphdef, base = nnx.split(transformer.init_model(mcfg, seed=0))
  base_before = jax.tree.map(np.array, base)
  adapters = lora.init_lora(base, RANK, jax.random.key(1))
  policy = learner._policy_fn(RANK, ALPHA)  # noqa: SLF001
  cfg = grpo.GRPOHparams(
      max_len=T, beta_ref=0.04, agg="token-mean", dual_clip=0.0
  )
  score = jax.jit(scoring.make_score_fn(graphdef, {"ref": graphdef}, cfg))
  batch = _batch()
  merged = policy({"params": adapters}, {"base": base})
  got, _ = score(merged, {"ref": base}, batch)
  full, _ = score(base, {"ref": base}, batch)
  np.testing.assert_array_equal(got["old_logprobs"], full["old_logprobs"])
  np.testing.assert_array_equal(got["ref_logprobs"], full["old_logprobs"])
  batch.update(got)
  tx = optax.adam(1e-2)
  spec = steps.StepSpec(
      method=methods.get("grpo"),
      student_graphdef=graphdef,
      frozen_graphdefs={},
      tx=tx,
      loss_cfg=cfg,
      lora_rank=RANK,
      lora_alpha=ALPHA,
  )
  step = jax.jit(
      steps.flat_step(steps.make_train_step(spec), 2),
      donate_argnums=(0,),
  )
  ts = {
      "params": adapters,
      "opt": tx.init(adapters),
      "step": jnp.zeros((), jnp.int32),
  }
  for _ in range(3):
    ts, m = step(ts, {"base": base}, batch)
    assert float(m["train/grad_norm"]) > 0
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(base_before)):
    np.testing.assert_array_equal(a, b)
  assert all(float(jnp.abs(ad["b"]).max()) > 0 for ad in ts["params"].values())
  # The reference (base, adapters off) no longer equals the policy.
  moved, _ = score(policy(ts, {"base": base}), {"ref": base}, batch)
  assert not np.array_equal(moved["old_logprobs"], moved["ref_logprobs"])


def _cfg(**over):
  cfg = config_lib.load(os.path.join(ROOT, "configs/grpo.py:runlocal"))
  ov = cfg.student.overrides
  ov.d_model, ov.num_layers, ov.mlp_dim = 32, 1, 64
  cfg.train.tensorboard = False
  cfg.data.num_examples = 32
  cfg.rl.max_new_tokens = 8
  cfg.train.save_every = 1
  cfg.optim.schedule = "constant"
  cfg.optim.lr = 1e-2
  cfg.lora.rank = RANK
  cfg.rl.reward = "surrogate"  # length-dependent: non-zero advantages
  config_lib.set_keys(cfg, over)
  return cfg


@pytest.mark.slow  # three short runs (~90 s on 2 shared cores)
def test_lora_rl_checkpoints_adapters_only_and_resumes_exactly(tmp_path):
  straight, parts = str(tmp_path / "a"), str(tmp_path / "b")
  main.run_job(_cfg(**{"train.steps": 3}), straight)
  main.run_job(_cfg(**{"train.steps": 1}), parts)
  main.run_job(_cfg(**{"train.steps": 3}), parts)
  rows = metrics.read_metrics(straight)
  assert any(r["rollout/adv_abs_mean"] > 0 for r in rows)
  assert all(r["train/grad_norm"] > 0 for r in rows)
  a, b = testing.load_export(straight), testing.load_export(parts)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Checkpoints: adapters (a, b per target) and their optimizer state only.
  meta = glob.glob(
      os.path.join(straight, "checkpoints", "3", "**", "_METADATA")
  )
  text = "".join(open(p, encoding="utf-8").read() for p in meta)
  assert "q_DNH" in text and "down_FD" in text
  assert "embed_VD" not in text and "final_norm" not in text
  # The export is merged: base + (α/r)·a·b. Against the base model (built
  # again from the config, as the run does), only targeted kernels moved.
  cfg = _cfg()
  tok = inputs.load_tokenizer(cfg.data.tokenizer, str(tmp_path / "tok"))
  mesh = sharding.make_mesh(tuple(cfg.mesh_shape))
  base = learner.trainer.build_model(cfg.student, tok, mesh)
  hf_io.save_pretrained(base, str(tmp_path / "base" / "export"))
  b0 = testing.load_export(str(tmp_path / "base"))
  moved = {k for k in a if not np.array_equal(a[k], b0[k])}
  assert moved and all("proj" in k for k in moved), moved
  assert not any("embed" in k or "norm" in k for k in moved), moved


def test_bad_lora_config_is_a_clear_error():
  cfg = _cfg()
  cfg.lora.targets = ("q_DNH", "qkv_fused")
  with pytest.raises(ValueError, match=r"lora.targets=.* is invalid"):
    learner._check_config(cfg)  # noqa: SLF001
  cfg = _cfg()
  cfg.lora.alpha = 0.0
  with pytest.raises(ValueError, match="lora.alpha=0.0 is invalid"):
    learner._check_config(cfg)  # noqa: SLF001
  for spec in ("grpo.py", "kdrl.py", "gkd.py", "ampo.py"):  # all may use it
    c = config_lib.load(os.path.join(ROOT, "configs", spec))
    c.lora.rank = 8
    learner._check_config(c)  # noqa: SLF001
