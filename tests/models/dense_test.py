"""models.dense.project: values and gradients equal the plain einsum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.models import dense


@pytest.mark.parametrize(
    "x_shape,w_shape,n,eq",
    [
        ((2, 5, 8), (8, 12), 1, "bld,dx->blx"),
        ((2, 5, 8), (8, 3, 4), 1, "bld,dnh->blnh"),
        ((2, 5, 3, 4), (3, 4, 8), 2, "blnh,nhd->bld"),
    ],
)
def test_project_matches_einsum_values_and_grads(x_shape, w_shape, n, eq):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32)
  w = jax.random.normal(kw, w_shape, jnp.float32)
  out_shape = jax.eval_shape(lambda: jnp.einsum(eq, x, w)).shape
  g = jax.random.normal(kg, out_shape, jnp.float32)
  ours = lambda x, w: jnp.sum(dense.project(x, w, n, "highest") * g)
  ref = lambda x, w: jnp.sum(jnp.einsum(eq, x, w, precision="highest") * g)
  # float64 numpy reference of the forward pass.
  ref64 = np.einsum(eq, np.float64(x), np.float64(w))
  np.testing.assert_allclose(
      dense.project(x, w, n, "highest"), ref64, rtol=1e-5, atol=1e-5
  )
  vo, (dxo, dwo) = jax.jit(jax.value_and_grad(ours, (0, 1)))(x, w)
  vr, (dxr, dwr) = jax.jit(jax.value_and_grad(ref, (0, 1)))(x, w)
  np.testing.assert_allclose(vo, vr, rtol=1e-5)
  np.testing.assert_allclose(dxo, dxr, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dwo, dwr, rtol=1e-5, atol=1e-5)


def test_project_bf16_keeps_dtypes():
  x = jnp.ones((2, 3, 4), jnp.bfloat16)
  w = jnp.ones((4, 5), jnp.bfloat16)
  y, (dx, dw) = jax.value_and_grad(
      lambda x, w: jnp.sum(dense.project(x, w, 1, None).astype(jnp.float32)),
      (0, 1),
  )(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  assert float(y) == 2 * 3 * 5 * 4
  np.testing.assert_array_equal(np.float32(dw), np.full((4, 5), 6.0))


def test_project_rejects_mismatched_axes():
  with pytest.raises(ValueError, match="contracted axes"):
    dense.project(jnp.ones((2, 4)), jnp.ones((5, 3)), 1, None)
