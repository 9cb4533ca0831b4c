"""Sharded losses equal single-device ones on (2, 4) and (1, 8) CPU meshes.

Tokens (batch) go on the 'data' axis and the vocabulary on 'tensor', as the
trainer lays them out; conftest.py provides 8 fake CPU devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from w2s_jax import losses

MESHES = [(2, 4), (1, 8)]


@pytest.fixture(scope="module", autouse=True)
def _needs_eight_devices():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices; see tests/conftest.py")


def _mesh(shape):
  return jax.make_mesh(
      shape, ("data", "tensor"), axis_types=(AxisType.Auto,) * 2
  )


def _put(mesh, x, *spec):
  return jax.device_put(jnp.asarray(x), NamedSharding(mesh, P(*spec)))


def _assert_tree_close(a, b, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(np.max(np.abs(y)), 1e-30)
    assert np.max(np.abs(x - y)) / scale <= rtol


def _data(seed=0, b=4, length=6, v=64, d=8, e=12, k=5):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  out = dict(
      zs=f(b, length, v) * 2,
      zt=f(b, length, v) * 2,
      mask=rng.random((b, length)) > 0.3,
      hs=f(b * length, d),
      ws=f(d, v) * 0.6,
      ht=f(b * length, e),
      wt=f(e, v) * 0.6,
      targets=rng.integers(0, v, size=(b, length)).astype(np.int32),
  )
  lp_t = jax.nn.log_softmax(out["zt"], -1)
  lps, ids = jax.lax.top_k(lp_t, k)
  out["ids"], out["lps"] = np.asarray(ids), np.asarray(lps)
  return out


def _dense_fn(zs, zt, mask, ids, lps, targets):
  out = {}
  for name in ("fkl", "jsd", "tvd"):
    f = lambda s, n=name: losses.divergence(
        n, s, zt, mask, temperature=1.5, agg="seq-mean-token-mean"
    )[0]
    out[name] = jax.value_and_grad(f)(zs)
  for mode in ("renormalized", "tail_bucket"):
    f = lambda s, m=mode: losses.topk_divergence(s, ids, lps, mask, mode=m)[0]
    out[mode] = jax.value_and_grad(f)(zs)
  out["sft"] = jax.value_and_grad(
      lambda s: losses.sft_cross_entropy(s, targets, mask)[0]
  )(zs)
  return out


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_dense_losses_sharded_equal_single_device(mesh_shape):
  x = _data(seed=1)
  args = (x["zs"], x["zt"], x["mask"], x["ids"], x["lps"], x["targets"])
  single = jax.jit(_dense_fn)(*args)
  mesh = _mesh(mesh_shape)
  sharded_args = (
      _put(mesh, x["zs"], "data", None, "tensor"),
      _put(mesh, x["zt"], "data", None, "tensor"),
      _put(mesh, x["mask"], "data", None),
      _put(mesh, x["ids"], "data", None, None),
      _put(mesh, x["lps"], "data", None, None),
      _put(mesh, x["targets"], "data", None),
  )
  sharded = jax.jit(_dense_fn)(*sharded_args)
  assert sharded["fkl"][1].sharding.mesh.shape == mesh.shape
  _assert_tree_close(sharded, single)


def _chunked_fn(hs, ws, ht, wt, mask, ids, lps, targets, dw_blocks):
  out = {}
  kw = dict(chunk_size=8, dw_blocks=dw_blocks)
  for name in ("fkl", "jsd"):
    f = lambda a, b, n=name: losses.chunked_divergence(
        n, a, b, ht, wt, mask, temperature=1.5, **kw
    )[0]
    out[name] = jax.value_and_grad(f, argnums=(0, 1))(hs, ws)
  out["topk"] = jax.value_and_grad(
      lambda a, b: losses.chunked_topk_divergence(
          a, b, ids, lps, mask, mode="tail_bucket", **kw
      )[0],
      argnums=(0, 1),
  )(hs, ws)
  out["sft"] = jax.value_and_grad(
      lambda a, b: losses.chunked_cross_entropy(a, b, targets, mask, **kw)[0],
      argnums=(0, 1),
  )(hs, ws)
  return out


@pytest.mark.parametrize(
    "mesh_shape,dw_blocks",
    [
        ((2, 4), 4),
        ((1, 8), 4),
        pytest.param((2, 4), 1, marks=pytest.mark.slow),
    ],
)
def test_chunked_losses_sharded_equal_single_device(mesh_shape, dw_blocks):
  x = _data(seed=2)
  flat = lambda a: a.reshape((-1,) + a.shape[2:])
  args = (
      x["hs"],
      x["ws"],
      x["ht"],
      x["wt"],
      flat(x["mask"]),
      flat(x["ids"]),
      flat(x["lps"]),
      flat(x["targets"]),
  )
  fn = jax.jit(_chunked_fn, static_argnums=8)
  single = fn(*args, dw_blocks)
  mesh = _mesh(mesh_shape)
  specs = [
      ("data", None),
      (None, "tensor"),
      ("data", None),
      (None, "tensor"),
      ("data",),
      ("data", None),
      ("data", None),
      ("data",),
  ]
  sharded_args = [_put(mesh, a, *s) for a, s in zip(args, specs)]
  sharded = fn(*sharded_args, dw_blocks)
  _assert_tree_close(sharded, single)
  # The dense path on the same sharded inputs agrees too.
  dense = jax.jit(
      lambda hs, ws, ht, wt, m: jax.value_and_grad(
          lambda a, b: losses.divergence(
              "jsd", a @ b, ht @ wt, m, temperature=1.5
          )[0],
          argnums=(0, 1),
      )(hs, ws)
  )(*sharded_args[:5])
  _assert_tree_close(sharded["jsd"], dense)


def _rl_fn(tok_lp, old, ref, teacher, adv, mask, correct):
  grpo = jax.value_and_grad(
      lambda lp: losses.grpo_loss(
          lp,
          adv,
          mask,
          old_tok_lp_BL=old,
          ref_tok_lp_BL=ref,
          beta_ref=0.04,
          epsilon_high=0.28,
          dual_clip=10.0,
          agg="seq-mean-token-mean",
      )[0]
  )(tok_lp)
  kdrl = jax.value_and_grad(
      lambda lp: losses.kdrl_loss(
          lp,
          teacher,
          adv,
          mask,
          beta=5e-3,
          kd_masking="group",
          correct_B=correct,
          group_size=2,
          old_tok_lp_BL=old,
      )[0]
  )(tok_lp)
  return grpo, kdrl


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_policy_losses_sharded_equal_single_device(mesh_shape):
  rng = np.random.default_rng(3)
  b, length = 8, 6
  lp = lambda: (-rng.random((b, length)) * 3).astype(np.float32)
  args = (
      lp(),
      lp(),
      lp(),
      lp(),
      rng.normal(size=b).astype(np.float32),
      rng.random((b, length)) > 0.3,
      np.array([0, 0, 1, 0, 0, 0, 1, 1], bool),
  )
  single = jax.jit(_rl_fn)(*args)
  mesh = _mesh(mesh_shape)
  specs = [("data", None)] * 4 + [("data",), ("data", None), ("data",)]
  sharded = jax.jit(_rl_fn)(*[_put(mesh, a, *s) for a, s in zip(args, specs)])
  _assert_tree_close(sharded, single)
