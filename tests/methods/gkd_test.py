"""GKD: the adapter is the offline JSD(β) loss; λ, the spec, the bounds."""

import os

import numpy as np
import pytest

from w2s_jax import config_lib, methods, testing
from w2s_jax.methods import gkd, kd

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SPEC = methods.get("gkd")


def test_gkd_loss_is_the_token_mean_jsd_to_the_fused_teacher():
  student, teacher = testing.rl_model(0), testing.rl_model(1, d=48)
  batch = testing.rl_batch(2, 2, 3, 5, 0)
  hp = gkd.GKDHparams(beta=0.3, chunked=False)
  loss, _, _ = testing.method_loss_and_grads(
      SPEC, student, batch, hp, frozen={"teacher": teacher}
  )

  # float64 reference: JSD(β) = β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q.
  def probs(model):
    lp_ = np.asarray(
        model(batch["tokens"], batch["positions"], batch["segment_ids"]),
        np.float64,
    )[:, :-1]
    e = np.exp(lp_ - lp_.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p, q = probs(teacher), probs(student)
  m = 0.3 * p + 0.7 * q
  jsd = 0.3 * (p * np.log(p / m)).sum(-1) + 0.7 * (q * np.log(q / m)).sum(-1)
  mask = batch["completion_mask"][:, 1:] != 0
  want = np.where(mask, jsd, 0.0).sum() / mask.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  norms = SPEC.normalizers({k: v[None] for k, v in batch.items()}, hp)
  assert float(norms["tokens"]) == mask.sum()
  # The same number as the offline KD loss with these options.
  opts = dict(divergence="jsd", beta=0.3, tau_sq=False, chunked=False)
  model_loss, _ = kd.distill_loss(
      student, {"teacher": teacher}, batch, norms, kd.DistillHparams(**opts)
  )
  np.testing.assert_allclose(float(model_loss), float(loss), rtol=1e-6)


def test_spec_config_and_bounds():
  assert SPEC.rollouts == "mixed" and SPEC.frozen == ("teacher",)
  assert not SPEC.policy_gradient and SPEC.score_models(gkd.GKDHparams()) == ()
  c = config_lib.load(os.path.join(ROOT, "configs/gkd.py"))
  assert SPEC.hp(c.loss) == gkd.GKDHparams()
  with pytest.raises(
      methods.HparamError, match=r"lambda_on_policy=1.5 .*\[0, 1\]"
  ):
    SPEC.hp({"lambda_on_policy": 1.5})
  with pytest.raises(methods.HparamError, match=r"divergence='fkl' .* 'jsd'"):
    SPEC.hp({"divergence": "fkl"})
  with pytest.raises(methods.HparamError, match=r"loss.beta_ref is not a"):
    SPEC.hp({"beta_ref": 0.0})
