"""mHC's maps in the fused, reordered form (docs/math.md §2), and the first half of an mHC connection.

  mhc_coefficients(x, phi, alpha, bias)    x -> (H_pre, H_post, H_res): one GEMM over v = vec(x),
                                           the RMS after it, the gates, and the Sinkhorn of H_res
  mhc_connection_pre(x, phi, alpha, bias)  -> (u, ctx): the maps and u = sum_i H_pre[i] x_i;
                                           ``connection_post(F(u), ctx)`` finishes the update

Every op takes ``implementation=`` (``"auto"``, ``"xla"``, ``"cpu"``, ``"pallas"``,
``"triton"``; see :mod:`mhc_jax.ops.dispatch` for what ``"auto"`` picks and
:mod:`mhc_jax.ops.backends` for what each one is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc_jax import validation
from mhc_jax.ops import connection, dispatch
from mhc_jax.ops.sinkhorn import GRAD_MODES
from mhc_jax.ops.streams import Context, MHCConfig, num_coefficients


def _checked(x, phi, alpha, bias, num_iters, sinkhorn_eps, sinkhorn_grad, pre_eps, post_mult, rms_eps):
  """The checked arrays, x over tokens ``[T, N, C]``, its batch shape, and the MHCConfig."""
  x = connection.check_stream(x)
  phi, alpha, bias = map(jnp.asarray, (phi, alpha, bias))
  n, c = x.shape[-2:]
  k = num_coefficients(n)
  for name, a in (("phi", phi), ("alpha", alpha), ("bias", bias)):
    validation.check_float(name, a)
  validation.check_shape("phi", phi, (n * c, k), f"[N*C, N*N+2N] for N={n}, C={c}")
  validation.check_shape("alpha", alpha, (3,), "(alpha_pre, alpha_post, alpha_res)")
  validation.check_shape("bias", bias, (k,), f"[N*N+2N] for N={n}")
  validation.check_int("num_iters", num_iters, 1)
  validation.check_choice("sinkhorn_grad", sinkhorn_grad, GRAD_MODES)
  for name, value in (("sinkhorn_eps", sinkhorn_eps), ("pre_eps", pre_eps), ("post_mult", post_mult),
                      ("rms_eps", rms_eps)):
    validation.check_nonnegative(name, value)
  cfg = MHCConfig(n, num_iters, float(sinkhorn_eps), float(pre_eps), float(post_mult), float(rms_eps),
                  sinkhorn_grad)
  return connection.tokens(x, 2), x.shape[:-2], (phi, alpha, bias), cfg


def mhc_coefficients(
    x: jax.Array,
    phi: jax.Array,
    alpha: jax.Array,
    bias: jax.Array,
    *,
    num_iters: int = 20,
    sinkhorn_eps: float = 1e-6,
    sinkhorn_grad: str = "exact",
    pre_eps: float = 1e-6,
    post_mult: float = 2.0,
    rms_eps: float = 1e-6,
    implementation: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-token mHC mixing maps from the raw stream state (docs/math.md §2).

  Args:
    x: ``[..., N, C]`` stream state, any float dtype (bf16 in training).
    phi: ``[N*C, K]`` projection, columns [pre | post | res (row-major)], K = N*N + 2N.
    alpha: ``[3]`` gates (alpha_pre, alpha_post, alpha_res).
    bias: ``[K]``.
    num_iters, sinkhorn_eps, sinkhorn_grad: passed to :func:`mhc_jax.ops.sinkhorn_knopp`
      (the kernels compute the exact Sinkhorn gradient: ``sinkhorn_grad="exact"`` only).
    pre_eps: added to the sigmoid for H_pre (DeepSeek: 1e-6).
    post_mult: H_post = post_mult * sigmoid (paper and DeepSeek-V4: 2).
    rms_eps: epsilon of the RMS taken over the flattened N*C vector.
    implementation: which backend runs it (see the module docstring).

  Returns:
    ``(h_pre [..., N], h_post [..., N], h_res [..., N, N])`` in fp32 (fp64 for fp64 x).
  """
  x_TxNxC, batch, params, cfg = _checked(x, phi, alpha, bias, num_iters, sinkhorn_eps, sinkhorn_grad,
                                         pre_eps, post_mult, rms_eps)
  backend = dispatch.select(implementation, ("mhc_maps",), x_TxNxC, cfg)
  maps = dispatch.run(backend, lambda x, *p: backend.mhc_maps(x, *p, cfg), x_TxNxC, (x_TxNxC,), params)
  return connection.unflatten(maps, batch)


def mhc_connection_pre(x: jax.Array, phi: jax.Array, alpha: jax.Array, bias: jax.Array, *, num_iters: int = 20,
                       sinkhorn_eps: float = 1e-6, sinkhorn_grad: str = "exact", pre_eps: float = 1e-6,
                       post_mult: float = 2.0, rms_eps: float = 1e-6,
                       implementation: str = "auto") -> tuple[jax.Array, Context]:
  """The first half of an mHC connection: ``(u [..., C], ctx)`` with ``u = sum_i H_pre[i] x_i``.

  Takes :func:`mhc_coefficients`' arguments. ``ctx`` is an opaque pytree holding the maps
  (``ctx.h_pre``, ``ctx.h_post``, ``ctx.h_res``) and what the backend needs for the second
  half, ``connection_post(F(u), ctx)``. The ``"cpu"`` backend computes u in the coefficient
  kernel's pass and adds the merge's stream gradient inside that kernel's backward.
  """
  x_TxNxC, batch, params, cfg = _checked(x, phi, alpha, bias, num_iters, sinkhorn_eps, sinkhorn_grad,
                                         pre_eps, post_mult, rms_eps)
  backend = dispatch.select(implementation, ("mhc_maps",) + connection.CONNECTION_OPS, x_TxNxC, cfg)
  return connection.first_half(backend, "mhc", x_TxNxC, params, (cfg,), batch)
