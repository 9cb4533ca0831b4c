"""One jitted step per method lowers its loss; micro-batching is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from w2s_jax import methods, models, testing
from w2s_jax.training import optim, steps

V, L, B, K = 32, 12, 4, 8


def _rows(seed, prompt_len=4):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, V, (B, L)).astype(np.int32)
  lengths = rng.randint(L - 3, L + 1, B)
  seg = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  mask = seg * (np.arange(L)[None] >= prompt_len)
  return {
      "tokens": jnp.asarray(tokens * seg),
      "positions": jnp.asarray(np.tile(np.arange(L), (B, 1)) * seg, jnp.int32),
      "segment_ids": jnp.asarray(seg),
      "completion_mask": jnp.asarray(mask, jnp.int32),
  }


def _cache_rows(seed, temperature):
  """A teacher top-K cache [B, L, K] from random logits (float64 numpy)."""
  z = np.random.RandomState(seed).randn(B, L, V) * 2.0 / temperature
  lp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
  lp -= z.max(-1, keepdims=True)
  ids = np.argsort(-lp, axis=-1)[..., :K]
  return {
      "teacher_topk_ids": jnp.asarray(ids, jnp.int32),
      "teacher_topk_logprobs": jnp.asarray(
          np.take_along_axis(lp, ids, -1), jnp.float32
      ),
  }


def _batch(method, micro=1):
  if methods.get(method).data == "pairs":
    w, l = _rows(0), _rows(1)
    b = {f"chosen_{k}": v for k, v in w.items()}
    b.update({f"rejected_{k}": v for k, v in l.items()})
  else:
    b = _rows(0)
  if methods.get(method).data == "topk":
    b.update(_cache_rows(5, LOSS_CFG[method].get("teacher_temperature", 1.0)))
  return {k: v.reshape(micro, B // micro, *v.shape[1:]) for k, v in b.items()}


LOSS_CFG = {
    "sft": {},
    "distill": {"divergence": "fkl", "temperature": 2.0},
    "distill_cache": {"divergence": "fkl", "topk_mode": "tail_bucket"},
    "ssb": {
        "temperature": 2.0,
        "teacher_temperature": 2.0,
        "lambda_kd": 1.0,
        "lambda_ce": 0.1,
        "chunk_size": 16,
    },
    "redi": {"alpha": 0.8},
    "dpo": {"beta": 0.5},
    "simpo": {"beta": 2.0, "gamma": 0.5},
}


def _setup(method, lr=3e-3, loss_cfg=None, sgd=False):
  cfg = models.get_config("tiny-qwen2", vocab_size=V, max_len=L)
  s_def, s_state = nnx.split(models.init_model(cfg, seed=0))
  frozen, defs = {}, {}
  if method == "distill":
    t = models.init_model(
        cfg.replace(d_model=48, num_heads=4, head_dim=12), seed=7
    )
    defs["teacher"], frozen["teacher"] = nnx.split(t)
  if method == "dpo":
    defs["ref"], frozen["ref"] = nnx.split(models.init_model(cfg, seed=0))
  # SGD where updates are compared: Adam's normalisation would amplify
  # float-rounding differences of near-zero gradients.
  if sgd:
    tx = optax.sgd(1.0)
  else:
    tx, _ = optim.make_optimizer(lr, 10, schedule="constant", grad_clip=0)
  spec = steps.StepSpec(
      method=methods.get(method),
      student_graphdef=s_def,
      frozen_graphdefs=defs,
      tx=tx,
      loss_cfg=methods.get(method).hp(
          loss_cfg if loss_cfg is not None else LOSS_CFG[method]
      ),
  )
  state = {"params": s_state, "opt": tx.init(s_state), "step": jnp.int32(0)}
  return jax.jit(steps.make_train_step(spec)), state, frozen


# Golden (train/loss, train/grad_norm) of the first step on CPU: the fixed
# tiny models (seeds 0 / 7), batch and cache above. A change here means the
# numerics of a method changed; recompute only on purpose. Sanity anchors:
# SFT at init ≈ log V = 3.466; DPO at π_θ = π_ref is exactly log 2.
GOLDEN = {
    "sft": (3.449619770050049, 2.928163766860962),
    "distill": (0.022496838122606277, 0.18882767856121063),
    "distill_cache": (1.0849080085754395, 1.1263030767440796),
    "redi": (0.6482411623001099, 4.171233654022217),
    "dpo": (0.6931474208831787, 6.853212356567383),
    "simpo": (0.9151751399040222, 5.638073921203613),
    "ssb": (1.6695908308029175, 1.1809149980545044),
}


def test_golden_table_covers_every_method():
  assert sorted(GOLDEN) == sorted(methods.names("train"))


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_one_step_golden_metrics_and_loss_decreases(method):
  step, state, frozen = _setup(method)
  batch = _batch(method)
  state, m0 = step(state, frozen, batch)
  loss, grad_norm = GOLDEN[method]
  assert float(m0["train/loss"]) == pytest.approx(loss, rel=1e-4)
  assert float(m0["train/grad_norm"]) == pytest.approx(grad_norm, rel=1e-4)
  for _ in range(2):
    state, m1 = step(state, frozen, batch)
  assert float(m1["train/loss"]) < float(m0["train/loss"])


def test_dpo_starts_at_log2():
  step, state, frozen = _setup("dpo")
  _, m = step(state, frozen, _batch("dpo"))
  assert float(m["train/loss"]) == pytest.approx(np.log(2.0), abs=1e-6)


@pytest.mark.parametrize("method", ["sft", "distill", "redi"])
def test_micro_batches_equal_one_batch(method):
  """Uneven token counts across micro-batches still give the exact step."""
  step1, state, frozen = _setup(method, sgd=True)
  step4, _, _ = _setup(method, sgd=True)
  s1, m1 = step1(state, frozen, _batch(method, 1))
  s4, m4 = step4(state, frozen, _batch(method, 4))
  assert float(m1["train/loss"]) == pytest.approx(
      float(m4["train/loss"]), rel=1e-5
  )
  testing.assert_trees_close(s1["params"], s4["params"], atol=1e-6, rtol=1e-5)


def test_teacher_gets_no_update_and_zero_gradient():
  step, state, frozen = _setup("distill")
  before = jax.tree.map(np.asarray, frozen["teacher"])
  step(state, frozen, _batch("distill"))
  testing.assert_trees_close(before, frozen["teacher"], atol=0, rtol=0)


def test_dense_and_chunked_distill_steps_agree():
  cfg = dict(LOSS_CFG["distill"])
  step_c, state, frozen = _setup(
      "distill", loss_cfg={**cfg, "chunked": True, "chunk_size": 8}, sgd=True
  )
  step_d, _, _ = _setup("distill", loss_cfg={**cfg, "chunked": False}, sgd=True)
  sc, mc = step_c(state, frozen, _batch("distill"))
  sd, md = step_d(state, frozen, _batch("distill"))
  assert float(mc["train/loss"]) == pytest.approx(
      float(md["train/loss"]), rel=1e-5
  )
  testing.assert_trees_close(sc["params"], sd["params"], atol=1e-6, rtol=1e-5)
