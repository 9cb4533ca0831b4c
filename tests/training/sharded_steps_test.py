"""Sharded train steps equal the single-device step on 8 fake CPU devices.

For SFT, distillation (teacher fused in), GRPO and KDRL: the loss, every
metric, the gradients (read from Adam's first moment after one step: with no
clipping mu = (1 - b1) g exactly) and the parameters after one AdamW step on
the meshes (data, fsdp, tensor) = (8,1,1), (2,4,1), (1,2,4), (2,2,2) match
the step run on one device. Parameters are placed by the training rules
(FSDP on 'fsdp', tensor parallel on 'tensor'), micro-batch rows on
'data' x 'fsdp', exactly as the trainer lays them out.

One compiled step per (method, mesh) plus one reference per method: the
full matrix (16 cases, ~3.5 CPU-minutes) is ``slow``; the default run keeps
two cases that together touch every axis, the fused teacher and an RL loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from w2s_jax import methods, models, sharding
from w2s_jax.rl import scoring
from w2s_jax.training import optim, steps

MESHES = [(8, 1, 1), (2, 4, 1), (1, 2, 4), (2, 2, 2)]
V, L, B, M, G = 64, 12, 16, 2, 4  # B rows in M micro-batches; G per group
B1 = 0.9
LR = 1e-3
LOSS_CFG = {
    "sft": {"chunk_size": 16},
    "distill": {"divergence": "jsd", "temperature": 2.0, "chunk_size": 16},
    "grpo": {
        "agg": "token-mean",
        "epsilon_low": 0.2,
        "epsilon_high": 0.28,
        "dual_clip": 0.0,
        "beta_ref": 0.0,
    },
    "kdrl": {
        "dual_clip": 0.0,
        "kd_estimator": "k2",
        "kd_masking": "group",
        "group_size": G,
        "agg": "seq-mean-token-mean",
    },
}
# The default run: the fused teacher on all three axes, and KDRL on the
# tensor-heavy mesh (kv heads replicated there); the rest is `slow`.
DEFAULT = {("distill", (2, 2, 2)), ("kdrl", (1, 2, 4))}
CASES = [
    pytest.param(
        method,
        mesh,
        id=f"{method}-{'x'.join(map(str, mesh))}",
        marks=() if (method, mesh) in DEFAULT else pytest.mark.slow,
    )
    for method in LOSS_CFG
    for mesh in MESHES
]


@pytest.fixture(scope="module", autouse=True)
def _needs_eight_devices():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices; see tests/conftest.py")


def _student_cfg():
  # Every parameter dimension divides the axis it is sharded on except the
  # 2 GQA kv heads on a 4-way tensor axis (replicated, as on a real Qwen
  # with few kv heads), so that path is covered too.
  return models.get_config(
      "tiny-qwen2",
      vocab_size=V,
      d_model=32,
      num_heads=4,
      num_kv_heads=2,
      head_dim=8,
      mlp_dim=64,
      num_layers=1,
      max_len=L,
  )


def _teacher_cfg():
  return models.get_config(
      "tiny-llama",
      vocab_size=V,
      d_model=48,
      num_heads=4,
      num_kv_heads=4,
      head_dim=12,
      mlp_dim=96,
      num_layers=1,
      max_len=L,
  )


def _rows(rng, prompt_len=4):
  tokens = rng.integers(1, V, (B, L)).astype(np.int32)
  lengths = rng.integers(L - 4, L + 1, B)  # right padding of varying length
  seg = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
  return {
      "tokens": tokens * seg,
      "positions": (np.arange(L)[None] * seg).astype(np.int32),
      "segment_ids": seg,
      "completion_mask": (
          (seg * (np.arange(L)[None] >= prompt_len)).astype(np.int32)
      ),
  }


def _rl_batch(rng, student, teacher, loss_cfg):
  b = _rows(rng)
  s_def, s_state = nnx.split(student)
  t_def, t_state = nnx.split(teacher)
  score = jax.jit(scoring.make_score_fn(s_def, {"teacher": t_def}, loss_cfg))
  sc, _ = score(s_state, {"teacher": t_state}, jax.tree.map(jnp.asarray, b))
  # A stale policy (π_old != π) so that both clip branches are exercised.
  noise = rng.normal(scale=0.3, size=(B, L - 1)).astype(np.float32)
  b["old_logprobs"] = np.asarray(sc["old_logprobs"]) + noise
  b["teacher_logprobs"] = np.asarray(sc["teacher_logprobs"])
  reward = rng.integers(0, 2, B).astype(np.float32)
  reward[:G] = 1.0  # one all-correct group (zero advantage, KD masked)
  r_G = reward.reshape(-1, G)
  adv = (r_G - r_G.mean(1, keepdims=True)) / (r_G.std(1, keepdims=True) + 1e-4)
  b["advantages"] = adv.reshape(B).astype(np.float32)
  b["correct"] = reward
  b["kd_beta"] = np.full((B,), 0.3, np.float32)
  return b


@pytest.fixture(scope="module")
def models_():
  student = models.init_model(_student_cfg(), seed=0)
  teacher = models.init_model(_teacher_cfg(), seed=1)
  return student, teacher


def _setup(student, teacher, method):
  """(step fn, optimizer, params, frozen states, batch), host arrays."""
  s_def, s_state = nnx.split(student)
  t_def, t_state = nnx.split(teacher)
  # eps 1e-6, not 1e-8: some gradients are exactly zero in exact arithmetic
  # (the key bias shifts every score of a query equally, and softmax ignores
  # that), and Adam with a tiny eps turns their fp32 rounding noise, which
  # differs with the reduction order, into full +-lr steps.
  tx, _ = optim.make_optimizer(
      LR,
      10,
      schedule="constant",
      b1=B1,
      eps=1e-6,
      grad_clip=0.0,
      weight_decay=0.01,
  )
  cfg = LOSS_CFG[method]
  rng = np.random.default_rng(sorted(LOSS_CFG).index(method))
  if method in methods.names("rl"):
    m = methods.get(method)
    cfg = m.hp(cfg)
    batch = _rl_batch(rng, student, teacher, cfg)
  else:
    m, batch = methods.get(method), _rows(rng)
    cfg = m.hp(cfg)
  frozen_defs = {"teacher": t_def} if "teacher" in m.frozen else {}
  frozen = {"teacher": t_state} if "teacher" in m.frozen else {}
  spec = steps.StepSpec(
      method=m,
      student_graphdef=s_def,
      frozen_graphdefs=frozen_defs,
      tx=tx,
      loss_cfg=cfg,
  )
  batch = {k: v.reshape(M, B // M, *v.shape[1:]) for k, v in batch.items()}
  return steps.make_train_step(spec), tx, s_state, frozen, batch


@pytest.fixture(scope="module")
def cache(models_):
  """Setups and single-device references, built once per method."""
  store = {}

  def get(method):
    if method not in store:
      setup = _setup(*models_, method)
      store[method] = (setup, _run(setup)[0])
    return store[method]

  return get


def _run(setup, mesh=None):
  step, tx, params, frozen, batch = setup
  if mesh is None:
    state = {"params": params, "opt": tx.init(params), "step": jnp.int32(0)}
    return jax.jit(step)(state, frozen, batch), params
  with jax.set_mesh(mesh):
    params = jax.device_put(params, sharding.state_shardings(params, mesh))
    frozen = jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
    placed = {}
    for k, v in batch.items():
      names = (None, "batch") + (None,) * (v.ndim - 2)
      spec = sharding.logical_to_spec(names, v.shape, mesh)
      placed[k] = jax.device_put(v, NamedSharding(mesh, spec))
    state = {
        "params": params,
        "opt": jax.jit(tx.init)(params),
        "step": jnp.int32(0),
    }
    return jax.jit(step)(state, frozen, placed), params


def _assert_close(a, b, what, rtol=1e-5, atol=0.0):
  """max |a - b| <= rtol * max |b| + atol for every leaf."""
  la, ta = jax.tree.flatten_with_path(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb, what
  for (path, x), y in zip(la, lb):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(np.max(np.abs(y)), 1e-30)
    err = np.max(np.abs(x - y)) / scale
    assert (
        err <= rtol + atol / scale
    ), f"{what}{jax.tree_util.keystr(path)}: rel err {err}"


@pytest.mark.parametrize("method, mesh_shape", CASES)
def test_sharded_step_equals_single_device(cache, method, mesh_shape):
  setup, (ref_state, ref_metrics) = cache(method)
  mesh = sharding.make_mesh(mesh_shape)
  (state, metrics), placed = _run(setup, mesh)

  # The run really is sharded the way the mesh asks.
  embed = placed["embed_VD"].get_value().sharding.spec
  _, fsdp, tensor = mesh_shape
  assert ("fsdp" in embed) == (fsdp > 1) and ("tensor" in embed) == (
      tensor > 1
  ), embed
  # Outputs keep the input layout (the trainer donates and feeds them back).
  for x, y in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(placed)):
    assert x.sharding.is_equivalent_to(y.sharding, x.ndim)

  assert set(metrics) == set(ref_metrics)
  assert float(ref_metrics["train/loss"]) != 0.0
  # atol: GRPO's loss is a cancelling sum of +-A terms (advantages are
  # zero-mean per group), ~1e-3 here, so the fp32 reduction order alone moves
  # it by ~1e-8 absolute, i.e. more than 1e-5 of its own size.
  _assert_close(
      {k: metrics[k] for k in sorted(metrics)},
      {k: ref_metrics[k] for k in sorted(ref_metrics)},
      "metrics",
      atol=1e-7,
  )
  grads = optax.tree_utils.tree_get(state["opt"], "mu")
  ref_grads = optax.tree_utils.tree_get(ref_state["opt"], "mu")
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
  _assert_close(grads, ref_grads, "grads")
  _assert_close(state["opt"], ref_state["opt"], "opt")
  # Adam moves each weight by about lr * g / (|g| + eps): where g is exactly
  # 0 in exact arithmetic (the key bias), its rounding noise moves it by up to
  # ~1e-3 lr with eps = 1e-6; everything else must agree to 1e-5.
  _assert_close(state["params"], ref_state["params"], "params", atol=2e-3 * LR)
