"""RL methods: scoring step, GRPO/KDRL/AMPO losses through make_train_step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s_jax.decoding import generation
from w2s_jax.models import config as model_config
from w2s_jax.models import transformer
from w2s_jax.rl import rollouts, scoring

G, N, P, T = 4, 2, 3, 5  # group size, prompts, prompt width, new tokens
B, L = G * N, P + T


def _model(seed=0, d=32, layers=1):
  cfg = model_config.get_config(
      "tiny-qwen2", d_model=d, num_layers=layers, mlp_dim=64, vocab_size=24
  )
  return transformer.init_model(cfg, seed=seed)


def _batch(seed=0):
  """A hand-made RL batch: ragged left-padded prompts, ragged completions."""
  rng = np.random.default_rng(seed)
  p_len = rng.integers(1, P + 1, size=B)
  c_len = rng.integers(1, T + 1, size=B)
  prompt = np.zeros((B, P), np.int32)
  seg = np.zeros((B, P), np.int32)
  for i, k in enumerate(p_len):
    prompt[i, P - k :] = rng.integers(4, 24, size=k)
    seg[i, P - k :] = 1
  comp = rng.integers(4, 24, size=(B, T)).astype(np.int32)
  batch = rollouts._assemble(prompt, seg, comp, c_len)  # noqa: SLF001
  rewards = rng.integers(0, 2, size=(N, G)).astype(np.float32)
  rewards[0] = [1, 0, 0, 1]  # non-constant groups
  rewards[1] = [0, 1, 1, 1]
  batch["rewards"] = rewards
  batch["correct"] = rewards.reshape(B)
  batch["off_policy"] = np.zeros(B, np.float32)
  batch["kd_beta"] = np.zeros(B, np.float32)
  return batch


def _np_advantages(r, std=True, eps=1e-6):
  r = np.asarray(r, np.float64)
  a = r - r.mean(-1, keepdims=True)
  if std:
    a = a / (r.std(-1, ddof=1, keepdims=True) + eps)
  return a


def _cfg(**kw):
  cfg = dict(
      agg="token-mean",
      epsilon_low=0.2,
      epsilon_high=0.28,
      dual_clip=3.0,
      beta_ref=0.0,
      group_size=G,
      max_len=T,
  )
  cfg.update(kw)
  return cfg


def _np_lp(model, batch):
  logits = np.asarray(
      model(
          jnp.asarray(batch["tokens"]),
          jnp.asarray(batch["positions"]),
          jnp.asarray(batch["segment_ids"]),
      ),
      np.float64,
  )[:, :-1]
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
  lp = logits - logits.max(-1, keepdims=True) - lse[..., None]
  return np.take_along_axis(lp, batch["tokens"][:, 1:, None], -1)[..., 0]


def test_score_step_matches_independent_forward():
  student, teacher = _model(0), _model(1, d=48, layers=2)
  sg, ss = nnx.split(student)
  tg, ts = nnx.split(teacher)
  batch = _batch()
  score = jax.jit(scoring.make_score_fn(sg, {"teacher": tg, "ref": sg}, {}))
  got, _ = score(ss, {"teacher": ts, "ref": ss}, batch)
  mask = batch["completion_mask"][:, 1:] != 0
  for name, model in (("old", student), ("teacher", teacher)):
    np.testing.assert_allclose(
        np.where(mask, got[f"{name}_logprobs"], 0.0),
        np.where(mask, _np_lp(model, batch), 0.0),
        atol=2e-5,
    )
  np.testing.assert_array_equal(got["ref_logprobs"], got["old_logprobs"])


@pytest.mark.slow
def test_score_step_matches_the_sampler_logprobs():
  student = _model(0)
  sg, ss = nnx.split(student)
  prompts = [[5, 6, 7], [8, 9]]
  out = generation.generate(
      student, prompts, max_new_tokens=T, temperature=1.0, n=G, rng=0,
      eos_ids=2, pad_id=0, bucket=1,
  )  # fmt: skip
  tok_BP, seg_BP = generation.prepare_prompts(prompts, pad_id=0)
  tok_BP, seg_BP = np.repeat(tok_BP, G, 0), np.repeat(seg_BP, G, 0)
  batch = rollouts._assemble(tok_BP, seg_BP, out.tokens, out.lengths)  # noqa: SLF001
  got, _ = jax.jit(scoring.make_score_fn(sg, {}, {}))(ss, {}, batch)
  p = tok_BP.shape[1]
  mask = batch["completion_mask"][:, 1:] != 0
  # π_old of column t is the sampler's log-prob of completion token t - P + 1.
  old = np.asarray(got["old_logprobs"])[:, p - 1 :]
  np.testing.assert_allclose(
      np.where(mask[:, p - 1 :], old, 0.0), out.logprobs, atol=2e-4
  )


@pytest.mark.parametrize(
    "agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_grpo_matches_float64_reference(agg):
  model = _model()
  batch = _batch()
  lp = _np_lp(model, batch)
  mask = batch["completion_mask"][:, 1:] != 0
  rng = np.random.default_rng(1)
  # Old log-probs away from the current ones, so every clip branch fires.
  old = lp + rng.normal(0, 0.4, size=lp.shape)
  ref = lp + rng.normal(0, 0.3, size=lp.shape)
  adv = _np_advantages(batch["rewards"]).reshape(B)
  batch["advantages"] = adv.astype(np.float32)
  batch["old_logprobs"] = old.astype(np.float32)
  batch["ref_logprobs"] = ref.astype(np.float32)
  cfg = _cfg(agg=agg, beta_ref=0.04)
  loss, metrics, g = _grads(model, batch, cfg)
  # float64 reference, METHODS §5 and §0.3.
  ratio = np.exp(np.clip(lp - old, -20, 20))
  a = adv[:, None]
  pg = -np.minimum(ratio * a, np.clip(ratio, 0.8, 1.28) * a)
  pg = np.where(a < 0, np.minimum(pg, -3.0 * a), pg)
  d = np.clip(ref - lp, -20, 20)
  k3 = np.clip(np.exp(d) - d - 1, -10, 10)
  per = np.where(mask, pg + 0.04 * k3, 0.0)
  if agg == "token-mean":
    want = per.sum() / mask.sum()
  elif agg == "seq-mean-token-mean":
    want = np.mean(per.sum(-1) / mask.sum(-1))
  else:
    want = per.sum() / (B * T)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5)
  assert 0 < float(metrics["grpo/clip_frac"]) < 1
  # Four micro-batches with uneven token counts and the step-global
  # normalisers sum to the same loss and gradient.
  loss4, g4 = 0.0, None
  for i in range(4):
    rows = slice(2 * i, 2 * i + 2)
    sub = {k: v[rows] for k, v in batch.items() if k != "rewards"}
    li, _, gi = _grads(model, sub, cfg, norm_batch=batch)
    loss4 += float(li)
    g4 = gi if g4 is None else jax.tree.map(jnp.add, g4, gi)
  np.testing.assert_allclose(loss4, float(loss), rtol=1e-5)
  np.testing.assert_allclose(_flat(g4), _flat(g), rtol=1e-4, atol=1e-7)


def _grads(model, batch, cfg, method="grpo", norm_batch=None):
  """Loss, metrics and gradient of one micro-batch (norms of norm_batch)."""
  graphdef, state = nnx.split(model)
  m = scoring.get_method(method)
  mb = {k: jnp.asarray(v) for k, v in batch.items() if k != "rewards"}
  nb = (
      mb
      if norm_batch is None
      else {k: jnp.asarray(v) for k, v in norm_batch.items() if k != "rewards"}
  )
  norms = m.normalizers(jax.tree.map(lambda x: x[None], nb), cfg)

  def f(s):
    return m.loss(nnx.merge(graphdef, s), {}, mb, norms, cfg)

  (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(state)
  return loss, metrics, g


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_constant_reward_groups_give_zero_gradient():
  model = _model()
  batch = _batch()
  batch["rewards"][:] = 1.0
  adv = np.asarray(rollouts.losses.group_advantages(batch["rewards"]))
  assert np.all(adv == 0) and np.all(np.isfinite(adv))
  batch["advantages"] = adv.reshape(B)
  batch["old_logprobs"] = _np_lp(model, batch).astype(np.float32) + 0.1
  loss, _, g = _grads(model, batch, _cfg())
  assert float(loss) == 0.0
  assert np.all(_flat(g) == 0.0)


def _kd_batch(model, seed=0):
  batch = _batch(seed)
  lp = _np_lp(model, batch)
  rng = np.random.default_rng(seed + 5)
  batch["advantages"] = _np_advantages(batch["rewards"]).reshape(B)
  batch["advantages"] = batch["advantages"].astype(np.float32)
  batch["old_logprobs"] = (lp + rng.normal(0, 0.2, lp.shape)).astype(np.float32)
  batch["teacher_logprobs"] = (lp + rng.normal(0, 1.0, lp.shape)).astype(
      np.float32
  )
  return batch


def test_kdrl_with_beta_zero_equals_grpo_exactly():
  model = _model()
  batch = _kd_batch(model)
  batch["kd_beta"][:] = 0.0
  l_g, _, g_g = _grads(model, batch, _cfg())
  l_k, m_k, g_k = _grads(model, batch, _cfg(kd=True, kd_masking="none"), "kdrl")
  assert float(m_k["kdrl/kd"]) > 0  # the KD term is there, weighted by 0
  assert float(l_g) == float(l_k)
  np.testing.assert_array_equal(_flat(g_g), _flat(g_k))
  batch["kd_beta"][:] = 0.5
  l_k2, _, _ = _grads(model, batch, _cfg(kd=True), "kdrl")
  assert float(l_k2) > float(l_g)


@pytest.mark.parametrize("masking", ["none", "response", "group"])
def test_kd_masking_zeroes_the_kd_gradient_where_methods_says(masking):
  model = _model()
  batch = _kd_batch(model)
  batch["advantages"][:] = 0.0  # only the KD term has a gradient
  batch["kd_beta"][:] = 1.0
  # Group 0 has correct rows; group 1 is all wrong.
  batch["correct"] = np.array([1, 0, 0, 1, 0, 0, 0, 0], np.float32)
  cfg = _cfg(kd=True, kd_masking=masking, kd_estimator="k2")
  _, m, g = _grads(model, batch, cfg, "kdrl")
  keep = {
      "none": np.ones(B, bool),
      "response": batch["correct"] == 0,
      "group": np.repeat([False, True], G),
  }[masking]
  np.testing.assert_allclose(float(m["kdrl/keep_frac"]), keep.mean())
  for row in range(B):
    moved = {**batch, "teacher_logprobs": batch["teacher_logprobs"].copy()}
    moved["teacher_logprobs"][row] += 0.7
    _, _, g2 = _grads(model, moved, cfg, "kdrl")
    same = np.array_equal(_flat(g), _flat(g2))
    assert same == (not keep[row]), (masking, row)


def test_ampo_off_policy_rows_use_shaped_probability():
  model = _model()
  batch = _kd_batch(model)
  lp = _np_lp(model, batch)
  batch["old_logprobs"] = lp.astype(np.float32)
  batch["off_policy"] = np.array([0, 1, 0, 0, 1, 0, 0, 0], np.float32)
  cfg = _cfg(
      agg="seq-mean-token-sum-norm", entropy_coef=0.0, dual_clip=10.0,
      epsilon_low=0.2,
  )  # fmt: skip
  loss, metrics, _ = _grads(model, batch, cfg, "ampo")
  mask = batch["completion_mask"][:, 1:] != 0
  a = batch["advantages"][:, None].astype(np.float64)
  p = np.exp(lp)
  pg = np.where(batch["off_policy"][:, None] != 0, -a * p / (p + 0.1), -a)
  want = np.where(mask, pg, 0).sum() / (B * T)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(
      float(metrics["ampo/off_policy_frac"]),
      mask[batch["off_policy"] != 0].sum() / mask.sum(),
      rtol=1e-6,
  )


def test_unknown_method_and_wrong_divergence_are_clear_errors():
  with pytest.raises(ValueError, match="unknown RL method 'ppo'"):
    scoring.get_method("ppo")
  model = _model()
  with pytest.raises(ValueError, match="gkd needs loss.divergence='jsd'"):
    scoring.gkd_loss(model, {"teacher": model}, {}, {}, {"divergence": "fkl"})


def test_score_needs():
  assert scoring.score_needs("grpo", {"beta_ref": 0.04}) == ("ref",)
  assert scoring.score_needs("kdrl", {}) == ("teacher",)
  assert scoring.score_needs("gkd", {"beta_ref": 1.0}) == ()
