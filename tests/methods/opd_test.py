"""OPD: per-token reverse-KL advantages, their policy gradient, the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s_jax import config_lib, methods, testing
from w2s_jax.methods import opd

G, N, P, T = 4, 2, 3, 5  # group size, prompts, prompt width, new tokens
B = G * N
ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SPEC = methods.get("opd")


def _batch(model, stale: float, seed=0):
  batch = testing.rl_batch(G, N, P, T, seed)
  batch["rewards"][0] = [1, 0, 0, 1]
  batch["rewards"][1] = [0, 1, 1, 1]
  lp = testing.np_token_logprobs(model, batch)
  rng = np.random.default_rng(seed + 3)
  adv = testing.np_group_advantages(batch["rewards"], std=False)
  batch["advantages"] = adv.reshape(B).astype(np.float32)
  old = lp + rng.normal(0, stale, lp.shape) if stale else lp
  batch["old_logprobs"] = old.astype(np.float32)
  teacher = lp + rng.normal(0, 0.8, lp.shape)
  batch["teacher_logprobs"] = teacher.astype(np.float32)
  return batch, lp


@pytest.mark.parametrize("task_weight", [0.0, 0.5])
def test_loss_matches_float64_reference_of_the_per_token_advantage(task_weight):
  model = testing.rl_model()
  batch, lp = _batch(model, stale=0.4)  # π_old != π: the clip fires
  hp = opd.OPDHparams(kl_coef=1.5, task_weight=task_weight, epsilon_high=0.28)
  loss, metrics, _ = testing.method_loss_and_grads(SPEC, model, batch, hp)
  old = batch["old_logprobs"].astype(np.float64)
  teacher = batch["teacher_logprobs"].astype(np.float64)
  adv_task = batch["advantages"].astype(np.float64)[:, None]
  a = -1.5 * (old - teacher) + task_weight * adv_task  # the per-token advantage
  np.testing.assert_allclose(
      np.asarray(opd.advantages(batch, hp)), a, rtol=1e-5, atol=1e-6
  )
  ratio = np.exp(np.clip(lp - old, -20, 20))
  pg = -np.minimum(ratio * a, np.clip(ratio, 0.8, 1.28) * a)
  mask = batch["completion_mask"][:, 1:] != 0
  want = np.where(mask, pg, 0.0).sum() / mask.sum()
  np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-7)
  assert 0 < float(metrics["opd/clip_frac"]) < 1
  np.testing.assert_allclose(
      float(metrics["opd/reverse_kl"]),
      (old - teacher)[mask].mean(),
      rtol=1e-5,
  )


def test_gradient_is_the_policy_gradient_with_those_advantages():
  model = testing.rl_model()
  batch, lp = _batch(model, stale=0.0)  # one update per rollout: ρ = 1
  hp = opd.OPDHparams()
  _, _, g = testing.method_loss_and_grads(SPEC, model, batch, hp)
  mask = batch["completion_mask"][:, 1:] != 0
  a = -(lp - batch["teacher_logprobs"].astype(np.float64))
  a_c = jnp.asarray(np.where(mask, a, 0.0) / mask.sum(), jnp.float32)
  graphdef, state = nnx.split(model)
  targets = jnp.asarray(batch["tokens"][:, 1:, None])

  def surrogate(s):  # −Σ_t A_t log π_θ(y_t) / Σ mask, A constant
    logits = nnx.merge(graphdef, s)(
        batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    lp_all = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    lp_tok = jnp.take_along_axis(lp_all, targets, -1)[..., 0]
    return -(a_c * lp_tok).sum()

  want = jax.grad(surrogate)(state)
  np.testing.assert_allclose(
      testing.flat(g), testing.flat(want), rtol=2e-4, atol=1e-7
  )
  assert np.abs(testing.flat(g)).max() > 0


def test_spec_config_and_bounds():
  assert SPEC.rollouts == "student" and SPEC.policy_gradient
  assert SPEC.score_models(opd.OPDHparams()) == ("teacher",)
  c = config_lib.load(os.path.join(ROOT, "configs/opd.py:runlocal"))
  assert SPEC.hp(c.loss) == opd.OPDHparams() and c.job == "rl"
  with pytest.raises(methods.HparamError, match=r"loss.kl_coef=0.0 .* > 0"):
    SPEC.hp({"kl_coef": 0.0})
  with pytest.raises(methods.HparamError, match=r"task_weight=-1.0 .* >= 0"):
    SPEC.hp({"task_weight": -1.0})
  with pytest.raises(methods.HparamError, match=r"loss.beta_ref is not a"):
    SPEC.hp({"beta_ref": 0.04})


def test_cli_runlocal_trains_and_reports_the_reverse_kl(tmp_path):
  wd = str(tmp_path / "opd")
  small = [
      f"--config.{s}.overrides.{k}={v}"
      for s in ("student", "teacher")
      for k, v in (("d_model", 32), ("num_layers", 1), ("mlp_dim", 64))
  ]
  proc = subprocess.run(
      [
          sys.executable, "-m", "w2s_jax.main",
          "--config=configs/opd.py:runlocal", f"--workdir={wd}",
          "--config.train.steps=2", "--config.rl.reward_workers=0",
          "--config.rl.max_new_tokens=8", "--config.train.tensorboard=False",
          *small,
      ],
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
      capture_output=True,
      text=True,
      check=False,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  last = rows[-1]
  assert last["step"] == 2
  # A random teacher differs from the student: the reverse KL is positive.
  assert np.isfinite(last["train/loss"]) and last["opd/reverse_kl"] > 0
  assert "rollout/accuracy" in last  # the rollouts are graded
  assert os.path.isdir(os.path.join(wd, "export"))
