"""Weight matmuls whose backward pass suits XLA:CPU's fast GEMM kernels.

``project(x, w, n)`` contracts the last n axes of x with the first n axes of
w (``BLD,DX->BLX``, ``BLNH,NHD->BLD``). Autodiff would compute the weight
gradient dW = xᵀ·g as a dot whose left operand is contracted over its major
axis; XLA:CPU runs such dots in its generic kernel, about half as fast as the
YNNPACK kernel it uses for plain row-major products (profiled: the largest
single cost of the CPU train step). On CPU a custom VJP therefore transposes
x first, into a materialised copy (an optimization barrier stops XLA from
folding the transpose back into the dot), which costs one pass over x. On
other backends the plain einsum runs and autodiff is untouched.

Legend: M rows (batch × length), K contracted size, X output size.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _dot(a, b, precision):
  return jnp.matmul(a, b, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project_MK(x_MK, w_KX, precision):
  return _dot(x_MK, w_KX, precision)


def _fwd(x_MK, w_KX, precision):
  return _dot(x_MK, w_KX, precision), (x_MK, w_KX)


def _bwd(precision, res, g_MX):
  x_MK, w_KX = res
  dx_MK = jnp.einsum("mx,kx->mk", g_MX, w_KX, precision=precision)
  x_KM = jax.lax.optimization_barrier(x_MK.T)
  dw_KX = _dot(x_KM, g_MX.astype(x_KM.dtype), precision)
  return dx_MK.astype(x_MK.dtype), dw_KX.astype(w_KX.dtype)


_project_MK.defvjp(_fwd, _bwd)


def project(
    x: jax.Array, w: jax.Array, n_contract: int, precision: str | None
) -> jax.Array:
  """x [..., K1..Kn] · w [K1..Kn, X1..] -> [..., X1..] (x's dtype)."""
  lead, k_shape = x.shape[:-n_contract], x.shape[-n_contract:]
  if tuple(w.shape[:n_contract]) != tuple(k_shape):
    raise ValueError(
        f"project: x {x.shape} and w {w.shape} disagree on the"
        f" {n_contract} contracted axes."
    )
  out_shape = w.shape[n_contract:]
  k = math.prod(k_shape)
  if jax.default_backend() != "cpu":
    x2 = x.reshape(-1, k)
    y = jnp.matmul(x2, w.reshape(k, -1), precision=precision)
  else:
    y = _project_MK(x.reshape(-1, k), w.reshape(k, -1), precision)
  return y.reshape(lead + out_shape)
