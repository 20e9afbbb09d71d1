"""Stream helpers shared by HC and mHC and by every backend (no backend imports this one's users).

  MHCConfig            the static parameters of mHC's maps (iterations, epsilons, multiplier)
  num_coefficients     K = N*N + 2N, the columns of an mHC projection
  column_scales        the three alpha gates spread over the K columns
  rms_projection       ``(v @ w) * rsqrt(mean(v^2) + eps)``: both connections' maps start here
  saving_inputs        the custom-VJP shape of the stream ops: save the inputs, nothing else
  Context              what ``connection_pre`` hands to ``connection_post`` (opaque to callers)

Shape letters are defined in :mod:`mhc_jax`; ``X`` stands for any leading batch shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mhc_jax import validation


class MHCConfig(NamedTuple):
  """The static parameters of mHC's maps (docs/math.md §2-3); hashable, so kernels can key on it."""
  n: int
  num_iters: int = 20
  sinkhorn_eps: float = 1e-6
  pre_eps: float = 1e-6
  post_mult: float = 2.0
  rms_eps: float = 1e-6
  sinkhorn_grad: str = "exact"  # the kernels replay the Sinkhorn on-chip: "exact" only


def num_coefficients(n: int) -> int:
  """K = N*N + 2*N: the columns of phi, ordered [pre (N) | post (N) | res (N*N, row-major)]."""
  return n * n + 2 * n


def column_scales(alpha_3: jax.Array, n: int) -> jax.Array:
  """[alpha_pre]*N + [alpha_post]*N + [alpha_res]*N*N as one K vector."""
  return jnp.concatenate([jnp.broadcast_to(alpha_3[i], (size,)) for i, size in enumerate((n, n, n * n))])


def saving_inputs(fwd, bwd):
  """A ``jax.custom_vjp`` op ``fwd`` whose residuals are its inputs, in their own dtypes.

  ``bwd(*inputs, g)`` returns one cotangent per input. Nothing computed in the forward is
  kept, so a bf16 stream is never stored upcast.
  """
  op = jax.custom_vjp(fwd)
  op.defvjp(lambda *args: (fwd(*args), args), lambda args, g: bwd(*args, g))
  return op


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Context:
  """The state between the two halves of a connection: ``u, ctx = pre(x)``, ``x' = post(y, ctx)``.

  ``x`` is the stream state as the backend wants it back (the C++ backend passes it through
  its coefficient kernel, so that the gradient reaching x through the merge is added inside
  that kernel's backward); ``h_pre``, ``h_post``, ``h_res`` are the per-token maps in paper
  layout, fp32; ``implementation`` is the backend that made them.
  """
  x: jax.Array
  h_pre: jax.Array
  h_post: jax.Array
  h_res: jax.Array
  implementation: str = dataclasses.field(metadata=dict(static=True))


# --------------------------------------------------------------------- RMS projection
# Both connections compute their maps from a projection of the raw stream state followed by
# an RMS scale per row: mHC over the flattened N*C vector (docs/math.md §2, the RMS taken
# after the GEMM), HC per stream (§4). The custom VJP saves the input in its own dtype and
# keeps every dot in the row-major form that XLA:CPU's fast GEMM path takes: written naively,
# ``v.T @ g`` (a contraction over tokens with a small output) falls back to a generic kernel
# ~5x slower than the forward GEMM.


def _transposed(a):
  """``a.T`` materialized, so XLA cannot fold it back into the consuming dot."""
  return lax.optimization_barrier(jnp.swapaxes(a, -1, -2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_projection(v_XxP, w_PxK, eps, flatten=1):
  """``(v @ w) * rsqrt(mean(v^2, -1) + eps)`` -> ``[..., K]`` in the compute dtype.

  The last ``flatten`` axes of ``v`` form the row of P values (mHC passes ``[T, N, C]`` with
  ``flatten=2``): flattening inside keeps the saved input the caller's own array, not a
  reshaped copy that a rematerializing caller would store a second time.
  """
  return _projection_fwd(v_XxP, w_PxK, eps, flatten)[0]


def _projection_fwd(v_XxP, w_PxK, eps, flatten):
  cdt = validation.compute_dtype(v_XxP.dtype, w_PxK.dtype)
  vf = v_XxP.reshape(v_XxP.shape[:v_XxP.ndim - flatten] + (-1,)).astype(cdt)
  h_XxK = jnp.dot(vf, w_PxK.astype(cdt))
  inv_r_Xx1 = lax.rsqrt(jnp.mean(jnp.square(vf), axis=-1, keepdims=True) + eps)
  return h_XxK * inv_r_Xx1, (v_XxP, w_PxK, h_XxK, inv_r_Xx1)


def _projection_bwd(eps, flatten, res, g_XxK):
  del eps, flatten
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


rms_projection.defvjp(_projection_fwd, _projection_bwd)
