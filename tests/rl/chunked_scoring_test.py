"""Chunked RL scoring == the dense path for every RL method.

The default (``loss.chunked``) computes the sampled tokens' log-probs, the
entropies and the teacher's log-probs from hidden states in vocab chunks;
``loss.chunked=False`` is the dense [B, L, V] reference. Values and
gradients must agree to 1e-5 relative for GRPO / DAPO / Dr.GRPO, KDRL,
AMPO, GKD (full-distribution JSD), and so must the scoring step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s_jax import methods
from w2s_jax.models import config as model_config
from w2s_jax.models import transformer
from w2s_jax.rl import rollouts, scoring

G, N, P, T = 4, 2, 3, 5
B, L = G * N, P + T
CHUNK = 5  # 56 target rows -> 12 strided chunks with padding


def _model(seed=0, d=32, layers=1):
  cfg = model_config.get_config(
      "tiny-qwen2", d_model=d, num_layers=layers, mlp_dim=64, vocab_size=40
  )
  return transformer.init_model(cfg, seed=seed)


def _batch(student, seed=0):
  rng = np.random.default_rng(seed)
  p_len = rng.integers(1, P + 1, size=B)
  c_len = rng.integers(1, T + 1, size=B)
  prompt = np.zeros((B, P), np.int32)
  seg = np.zeros((B, P), np.int32)
  for i, k in enumerate(p_len):
    prompt[i, P - k :] = rng.integers(4, 40, size=k)
    seg[i, P - k :] = 1
  comp = rng.integers(4, 40, size=(B, T)).astype(np.int32)
  batch = rollouts._assemble(prompt, seg, comp, c_len)  # noqa: SLF001
  r = np.array([[1, 0, 0, 1], [0, 1, 1, 1]], np.float32)
  # Not group-centred: a zero-sum advantage makes the token-mean loss a
  # near-cancellation, which a relative tolerance cannot judge.
  a = r - 0.3
  batch["advantages"] = a.reshape(B).astype(np.float32)
  batch["correct"] = r.reshape(B)
  batch["off_policy"] = np.array([0, 1, 0, 0, 0, 0, 1, 0], np.float32)
  batch["kd_beta"] = np.full(B, 0.5, np.float32)
  dev = {k: jnp.asarray(v) for k, v in batch.items()}
  lp = scoring.token_logprobs(
      student, dev, scoring.ScoringHparams(chunked=False)
  )
  noise = rng.normal(0, 0.3, size=(3,) + lp.shape).astype(np.float32)
  batch["old_logprobs"] = np.asarray(lp) + noise[0]
  batch["ref_logprobs"] = np.asarray(lp) + noise[1]
  batch["teacher_logprobs"] = np.asarray(lp) + noise[2]
  batch["tis_weight"] = np.exp(np.minimum(noise[0], np.log(2.0)))
  return {k: jnp.asarray(v) for k, v in batch.items()}


CASES = {
    "grpo": (
        "grpo",
        dict(agg="seq-mean-token-mean", beta_ref=0.04, dual_clip=3.0),
    ),
    "dapo": (
        "grpo",
        dict(agg="token-mean", epsilon_high=0.28, dual_clip=10.0),
    ),
    "drgrpo+tis": (
        "grpo",
        dict(agg="seq-mean-token-sum-norm", dual_clip=0.0, tis=True),
    ),
    "kdrl": ("kdrl", dict(kd_estimator="k2", kd_masking="none")),
    "ampo": (
        "ampo",
        dict(agg="seq-mean-token-sum-norm", entropy_coef=0.1, dual_clip=10.0),
    ),
    "gkd": ("gkd", dict(divergence="jsd", beta=0.5, tau_sq=False)),
}


def _loss_and_grads(method, student, teacher, batch, cfg):
  m = methods.get(method)
  if not cfg.pop("tis", False):
    batch = {k: v for k, v in batch.items() if k != "tis_weight"}
  # The method's typed hparams from the keys it has.
  cfg = m.hparams(**{k: v for k, v in cfg.items() if k in m.hparams.keys()})
  graphdef, state = nnx.split(student)
  norms = m.normalizers(jax.tree.map(lambda x: x[None], batch), cfg)

  def f(s):
    return m.loss(
        nnx.merge(graphdef, s), {"teacher": teacher}, batch, norms, cfg
    )

  (loss, _), g = jax.value_and_grad(f, has_aux=True)(state)
  return float(loss), g


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_equals_dense_values_and_gradients(case):
  method, extra = CASES[case]
  student, teacher = _model(0), _model(1, d=48, layers=1)
  batch = _batch(student)
  # The loss adapters' former defaults (dual clip and β_ref off,
  # token-mean), then the case's own values.
  base = dict(
      group_size=G, max_len=T, epsilon_low=0.2, chunk_size=CHUNK,
      dual_clip=0.0, beta_ref=0.0, agg="token-mean",
  )  # fmt: skip
  base.update(extra)
  lc, gc = _loss_and_grads(
      method, student, teacher, batch, dict(base, chunked=True)
  )
  ld, gd = _loss_and_grads(
      method, student, teacher, batch, dict(base, chunked=False)
  )
  assert ld != 0.0
  np.testing.assert_allclose(lc, ld, rtol=1e-5)
  fc, fd = (jax.tree.leaves(g) for g in (gc, gd))
  for a, b in zip(fc, fd):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale + 1e-12)
  # Not vacuous: the embedding (which carries the unembedding, tied) moves.
  assert max(float(jnp.max(jnp.abs(b))) for b in fd) > 0


def test_chunked_scoring_equals_dense_scoring():
  student, teacher = _model(0), _model(1, d=48, layers=1)
  sg, ss = nnx.split(student)
  tg, ts = nnx.split(teacher)
  batch = _batch(student)
  got = {}
  for chunked in (True, False):
    cfg = scoring.ScoringHparams(
        chunked=chunked, chunk_size=CHUNK, pg_temperature=0.8
    )
    score = jax.jit(scoring.make_score_fn(sg, {"teacher": tg, "ref": sg}, cfg))
    got[chunked], _ = score(ss, {"teacher": ts, "ref": ss}, batch)
  mask = np.asarray(batch["completion_mask"][:, 1:]) != 0
  for k in ("old_logprobs", "ref_logprobs", "teacher_logprobs"):
    np.testing.assert_allclose(
        np.where(mask, got[True][k], 0.0),
        np.where(mask, got[False][k], 0.0),
        rtol=1e-5,
        atol=1e-6,
    )
