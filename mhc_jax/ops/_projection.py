"""RMS-normalized projection ``(v @ w) * rsqrt(mean(v^2) + eps)``, shared by mHC and HC.

Both connections compute their maps from a projection of the raw stream state followed
by an RMS scale per row: mHC over the flattened ``N*C`` vector (SPEC section 2, the RMS
taken after the GEMM), HC per stream. The custom VJP saves the input in its own dtype
(a bf16 stream is never stored upcast) and keeps every dot in the row-major form that
XLA:CPU's fast GEMM path takes: written naively, ``v.T @ g`` (a contraction over tokens
with a small output) falls back to a generic kernel ~5x slower than the forward GEMM.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mhc_jax import validation as _checks


def _transposed(a):
  """``a.T`` materialized, so XLA cannot fold it back into the consuming dot."""
  return lax.optimization_barrier(jnp.swapaxes(a, -1, -2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_projection(v_XxP, w_PxK, eps):
  """``(v @ w) * rsqrt(mean(v^2, -1) + eps)`` -> ``[..., K]`` in the compute dtype."""
  return _fwd(v_XxP, w_PxK, eps)[0]


def _fwd(v_XxP, w_PxK, eps):
  cdt = _checks.compute_dtype(v_XxP.dtype, w_PxK.dtype)
  vf = v_XxP.astype(cdt)
  h_XxK = jnp.dot(vf, w_PxK.astype(cdt))
  inv_r_Xx1 = lax.rsqrt(jnp.mean(jnp.square(vf), axis=-1, keepdims=True) + eps)
  return h_XxK * inv_r_Xx1, (v_XxP, w_PxK, h_XxK, inv_r_Xx1)


def _bwd(eps, res, g_XxK):
  del eps
  v_XxP, w_PxK, h_XxK, inv_r_Xx1 = res
  p, k = w_PxK.shape
  cdt = h_XxK.dtype
  v_TxP = v_XxP.reshape(-1, p).astype(cdt)
  g_TxK = g_XxK.reshape(-1, k).astype(cdt)
  inv_r_Tx1 = inv_r_Xx1.reshape(-1, 1)
  gh_TxK = g_TxK * inv_r_Tx1
  # [K, T] @ [T, P], transposed back: the token contraction in row-major form.
  g_w = jnp.swapaxes(lax.optimization_barrier(jnp.dot(_transposed(gh_TxK), v_TxP)), 0, 1)
  # inv_r = (mean(v^2) + eps)^(-1/2)  =>  d inv_r / dv = -inv_r^3 * v / P.
  g_inv_r_Tx1 = jnp.sum(g_TxK * h_XxK.reshape(-1, k), axis=-1, keepdims=True)
  coef_Tx1 = g_inv_r_Tx1 * inv_r_Tx1**3 / p
  g_v = jnp.dot(gh_TxK, _transposed(w_PxK.astype(cdt))) - coef_Tx1 * v_TxP
  return g_v.reshape(v_XxP.shape).astype(v_XxP.dtype), g_w.astype(w_PxK.dtype)


rms_projection.defvjp(_fwd, _bwd)
