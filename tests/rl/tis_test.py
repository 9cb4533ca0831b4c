"""bf16 rollouts with truncated importance sampling (TIS).

π_sample is the sampler's log-prob of its own token (``rl.sample_dtype``
casts the policy for sampling); π_train the scored one. The policy term of
every token is weighted by min(π_train/π_sample, C) (``rl.tis_cap``).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s_jax import config_lib, losses
from w2s_jax.models import config as model_config
from w2s_jax.models import transformer
from w2s_jax.rl import learner, rollouts, scoring
from w2s_jax.rl import problems as rl_problems
from w2s_jax.training import inputs

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
B, L = 6, 9


def _lp_batch(seed=0):
  rng = np.random.default_rng(seed)
  mask = (rng.random((B, L)) < 0.7).astype(np.int32)
  old = rng.normal(-2.0, 1.0, (B, L - 1)).astype(np.float32)
  return {
      "completion_mask": jnp.asarray(mask),
      "off_policy": jnp.asarray(np.array([0, 0, 1, 0, 0, 0], np.float32)),
  }, old


def test_equal_logprobs_give_weight_exactly_one_and_the_same_loss():
  batch, old = _lp_batch()
  batch["sample_logprobs"] = jnp.asarray(old)
  w, m = scoring.sampler_mismatch(jnp.asarray(old), batch, 2.0)
  assert np.all(np.asarray(w) == 1.0)
  assert float(m["tis/logprob_abs_diff"]) == 0.0
  assert float(m["tis/capped_frac"]) == 0.0
  rng = np.random.default_rng(3)
  tok_lp = jnp.asarray(old + rng.normal(0, 0.3, old.shape).astype(np.float32))
  adv = jnp.asarray(rng.normal(size=B).astype(np.float32))
  mask = batch["completion_mask"][:, 1:]
  kw = dict(old_tok_lp_BL=jnp.asarray(old), dual_clip=3.0)
  f = lambda lp, iw: losses.grpo_loss(lp, adv, mask, is_weight_BL=iw, **kw)[0]  # noqa: E731
  l0, g0 = jax.value_and_grad(f)(tok_lp, None)
  l1, g1 = jax.value_and_grad(f)(tok_lp, w)
  assert float(l0) == float(l1)
  np.testing.assert_array_equal(g0, g1)


def test_weights_and_metrics_match_numpy():
  batch, old = _lp_batch(1)
  rng = np.random.default_rng(2)
  sample = old + rng.normal(0, 1.0, old.shape).astype(np.float32)
  batch["sample_logprobs"] = jnp.asarray(sample)
  w, m = scoring.sampler_mismatch(jnp.asarray(old), batch, 1.5)
  keep = (np.asarray(batch["completion_mask"])[:, 1:] != 0) & (
      np.asarray(batch["off_policy"])[:, None] == 0
  )
  d = old.astype(np.float64) - sample
  want = np.where(keep, np.minimum(np.exp(d), 1.5), 1.0)
  np.testing.assert_allclose(w, want, rtol=1e-6)
  np.testing.assert_allclose(
      m["tis/logprob_abs_diff"], np.abs(d)[keep].mean(), rtol=1e-5
  )
  capped = (np.exp(d) > 1.5)[keep].mean()
  assert 0 < capped < 1
  np.testing.assert_allclose(m["tis/capped_frac"], capped, rtol=1e-6)
  # Off: no weights, the mismatch is still measured.
  w0, m0 = scoring.sampler_mismatch(jnp.asarray(old), batch)
  assert w0 is None and set(m0) == {"tis/logprob_abs_diff"}
  # The weights multiply the policy term per token (A > 0, ρ = 1, no clip).
  mask = batch["completion_mask"][:, 1:]
  adv = jnp.ones((B,), jnp.float32)
  lp = jnp.asarray(old)
  loss, _ = losses.grpo_loss(
      lp, adv, mask, old_tok_lp_BL=lp, is_weight_BL=w, agg="token-mean"
  )
  m_np = np.asarray(mask) != 0
  np.testing.assert_allclose(
      float(loss), -np.asarray(w)[m_np].sum() / m_np.sum(), rtol=1e-6
  )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tok = inputs.load_tokenizer("char", str(tmp_path_factory.mktemp("tok")))
  c = config_lib.train_config("grpo")
  c.data.num_examples = 8
  problems = rl_problems.build_problems("grpo", c.data, {}, tok)
  mcfg = model_config.get_config(
      "tiny-qwen2", d_model=32, num_layers=2, vocab_size=tok.vocab_size
  )
  model = transformer.init_model(mcfg, seed=0)
  return tok, problems, mcfg, *nnx.split(model)


def _mismatch(setup, sample_dtype, cap=2.0):
  tok, problems, mcfg, graphdef, params = setup
  cfg = rollouts.RolloutConfig(
      group_size=2,
      prompts_per_step=2,
      max_new_tokens=8,
      sample_dtype=sample_dtype,
  )
  roller = rollouts.Roller(
      cfg, tok, rl_problems.PromptSource(problems, 0), graphdef, mcfg
  )
  batch, _, _ = roller.policy_batch(params, 0, jax.random.key(0))
  dev = {k: jnp.asarray(v) for k, v in batch.items()}
  score = jax.jit(
      scoring.make_score_fn(graphdef, {}, scoring.ScoringHparams(), tis_cap=cap)
  )
  out, m = score(params, {}, dev)
  mask = np.asarray(batch["completion_mask"][:, 1:]) != 0
  assert mask.sum() > 0
  return np.asarray(out["tis_weight"])[mask], {
      k: float(v) for k, v in m.items()
  }


@pytest.mark.slow  # two sampler compiles (~40 s on 2 shared cores)
def test_fp32_sampling_weight_is_one_and_bf16_sampling_shows_the_mismatch(
    setup,
):
  w32, m32 = _mismatch(setup, "")
  # Same weights, same precision: only summation order (cached decode vs
  # full forward) separates π_sample from π_train.
  assert m32["tis/logprob_abs_diff"] < 1e-5
  np.testing.assert_allclose(w32, 1.0, atol=1e-5)
  assert m32["tis/capped_frac"] == 0.0
  w16, m16 = _mismatch(setup, "bfloat16")
  # bf16-rounded weights: a mismatch well above the fp32 noise floor.
  assert m16["tis/logprob_abs_diff"] > max(
      20 * m32["tis/logprob_abs_diff"], 5e-5
  )
  assert np.max(np.abs(w16 - 1.0)) > 1e-4


def test_bad_tis_and_sample_dtype_are_config_errors():
  base = os.path.join(ROOT, "configs/grpo.py:runlocal")
  for cap in (1.0, 0.5, -2.0):
    cfg = config_lib.load(base)
    cfg.rl.tis_cap = cap
    with pytest.raises(ValueError, match=r"rl.tis_cap=.* is invalid"):
      config_lib.validate(cfg)
    with pytest.raises(ValueError, match=r"rl.tis_cap=.*must be > 1"):
      learner._check_config(cfg)  # noqa: SLF001
  cfg = config_lib.load(base)
  cfg.rl.sample_dtype = "int8"
  with pytest.raises(ValueError, match="rl.sample_dtype='int8' is invalid"):
    config_lib.validate(cfg)
  cfg = config_lib.load(os.path.join(ROOT, "configs/gkd.py:runlocal"))
  cfg.rl.tis_cap = 2.0
  with pytest.raises(ValueError, match="method 'gkd' has none"):
    learner._check_config(cfg)  # noqa: SLF001
  cfg = config_lib.load(base)
  cfg.rl.tis_cap, cfg.loss.pg_temperature = 2.0, 0.7
  with pytest.raises(ValueError, match="needs the sampler's log-probs"):
    learner._check_config(cfg)  # noqa: SLF001
  cfg.rl.temperature = 0.7  # the sampler records π at T 0.7 (top_p 1)
  learner._check_config(cfg)  # noqa: SLF001


@pytest.mark.slow  # ~1-2 min each on 2 shared cores
@pytest.mark.parametrize(
    "spec, over",
    [
        (
            "configs/kdrl.py:runlocal",
            {"rl.sample_dtype": "bfloat16", "rl.tis_cap": 2.0, "lora.rank": 4},
        ),
        (
            "configs/ampo.py:runlocal",
            {"rl.sample_dtype": "bfloat16", "rl.tis_cap": 2.0},
        ),
        ("configs/gkd.py:runlocal", {"lora.rank": 4}),
    ],
)
def test_rl_methods_run_with_bf16_rollouts_tis_and_lora(tmp_path, spec, over):
  from w2s_jax import main  # noqa: PLC0415
  from w2s_jax.training import metrics  # noqa: PLC0415

  cfg = config_lib.load(os.path.join(ROOT, spec))
  for section in ("student", "teacher"):
    ov = cfg[section].overrides
    ov.d_model, ov.num_layers, ov.mlp_dim = 32, 1, 64
  cfg.train.tensorboard = False
  cfg.data.num_examples = 32
  cfg.rl.max_new_tokens = 12
  cfg.train.steps = 2
  config_lib.set_keys(cfg, over)
  last = main.run_job(cfg, str(tmp_path))
  rows = metrics.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2]
  assert np.isfinite(last["train/loss"])
  if "rl.tis_cap" in over:
    for r in rows:
      assert r["tis/logprob_abs_diff"] > 0  # bf16 sampler vs fp32 trainer
      assert 0 <= r["tis/capped_frac"] < 1
      assert r["tis/weight_mean"] > 0
