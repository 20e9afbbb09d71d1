"""The ``"cpu"`` backend: the fused C++ kernels of :mod:`mhc_jax.ops.cpu`, called through ``jax.ffi``.

Why: on a CPU, XLA runs each mHC op as several passes over the ``[T, N, C]`` stream (a
skinny GEMM, a separate sum of squares, batched 4x4 dots for dH_res, dozens of tiny
Sinkhorn loop fusions). The kernels make one pass per op, split over XLA's own intra-op
thread pool in fixed token ranges, so every result is the same whatever the thread count.

The first half of a connection (``mhc_connection_pre`` / ``hc_connection_pre``) runs as one
kernel each way: the maps and ``u = sum_i h_pre[i] x_i`` in one pass over x. The kernel also
hands x back, as the stream that the merge reads: the gradient reaching x through the merge
then comes back to this kernel's backward, which adds it in the same pass (XLA would add the
ops' stream gradients in passes of its own).

Kernels take fp32 and 1 <= N <= 8; other stream dtypes are cast around them (``"auto"``
picks this backend for fp32 streams only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mhc_jax.ops.backends import fp32_kernel_limits
from mhc_jax.ops.cpu import build as library
from mhc_jax.ops.streams import Context, MHCConfig, column_scales, saving_inputs

NAME = "cpu"
OPS = frozenset({"mhc_maps", "hc_maps", "pre", "post"})
F32 = jnp.float32


def unavailable(*, allow_build: bool) -> str | None:
  if jax.default_backend() != "cpu":
    return f"implementation='cpu' runs on the CPU backend only; the backend is {jax.default_backend()!r}"
  return library.status(allow_build=allow_build)


def unsupported(op: str, x, cfg: MHCConfig | None) -> str | None:
  return fp32_kernel_limits(NAME, op, x, cfg, library.MAX_STREAMS)


def is_built() -> bool:
  return library.is_built()


def _call(name: str, out_shapes, *args, **attrs):
  return jax.ffi.ffi_call(f"mhc_jax_{name}", out_shapes, vmap_method="sequential")(*args, **attrs)


def _f32(shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), F32)


def _accumulating(g_in):
  """(g_in or a 1-element placeholder, accumulate flag) for a backward kernel."""
  return (jnp.zeros((1,), F32), False) if g_in is None else (g_in, True)


def _in_fp32(op):
  """The kernels take fp32: cast in, and back to the stream dtype (autodiff casts the gradients)."""
  return lambda x, *rest: op(*(a.astype(F32) for a in (x, *rest))).astype(x.dtype)


# --------------------------------------------------------------------------- pre / post


def _pre_fwd(x, h):
  return _call("pre_fwd", _f32(x.shape[:-2] + x.shape[-1:]), x, h)


def _pre_bwd(x, h, g):
  no_g_in = jnp.zeros((1,), F32)  # the kernel can add a gradient arriving by another path; none here
  return tuple(_call("pre_bwd", (_f32(x.shape), _f32(h.shape)), x, h, g, no_g_in, accumulate=False))


def _post_fwd(x, y, h_post, h_res):
  return _call("post_fwd", _f32(x.shape), x, y, h_post, h_res)


def _post_bwd(x, y, h_post, h_res, g):
  shapes = tuple(_f32(a.shape) for a in (x, y, h_post, h_res))
  return tuple(_call("post_bwd", shapes, x, y, h_post, h_res, g))


pre = _in_fp32(saving_inputs(_pre_fwd, _pre_bwd))
post = _in_fp32(saving_inputs(_post_fwd, _post_bwd))


# ------------------------------------------------------------------------- mHC maps


def _attrs(cfg: MHCConfig):
  f = np.float32  # FFI attributes are typed: float32 on the C++ side
  return dict(iters=int(cfg.num_iters), sinkhorn_eps=f(cfg.sinkhorn_eps), pre_eps=f(cfg.pre_eps),
              post_mult=f(cfg.post_mult), rms_eps=f(cfg.rms_eps))


def _padded(k: int) -> int:
  """The forward kernels' projection width: K rounded up to whole vectors of LANES floats."""
  return -(-k // library.LANES) * library.LANES


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _coefficients(x_TxNxC, phi_PxK, scale_K, bias_K, cfg: MHCConfig, fused: bool):
  """``(h_pre, h_post, h_res)`` from fp32 x; with ``fused``, then u ``[T, C]`` and x (passed)."""
  return _coef_fwd(x_TxNxC, phi_PxK, scale_K, bias_K, cfg, fused)[0]


def _coef_fwd(x, phi_PxK, scale_K, bias_K, cfg, fused):
  t, n, c = x.shape
  k = phi_PxK.shape[1]
  h_pre, h_post, h_res, proj, inv_r, u = _call(
      "coef_fwd", (_f32((t, n)), _f32((t, n)), _f32((t, n, n)), _f32((t, k)), _f32((t,)),
                   _f32((t, c) if fused else (1,))),
      x, jnp.pad(phi_PxK, ((0, 0), (0, _padded(k) - k))), scale_K, bias_K, with_pre=fused,
      **_attrs(cfg))
  outs = (h_pre, h_post, h_res) + ((u, x) if fused else ())
  return outs, (x, jnp.swapaxes(phi_PxK, 0, 1), scale_K, bias_K, proj, inv_r)


def _coef_bwd(cfg, fused, res, grads):
  x, phi_KxP, scale_K, bias_K, proj_TxK, inv_r_T = res
  g_pre, g_post, g_res = grads[:3]
  g_u = grads[3] if fused else jnp.zeros((1,), F32)
  g_in, accumulate = _accumulating(grads[4] if fused else None)
  t, k = proj_TxK.shape
  p = phi_KxP.shape[1]
  g_x, g_logits, g_phi_parts = _call(
      "coef_bwd", (_f32(x.shape), _f32((t, k)), _f32((library.GRAD_SLOTS, p, _padded(k)))),
      x, phi_KxP, scale_K, bias_K, proj_TxK, inv_r_T, g_pre, g_post, g_res, g_u, g_in,
      with_pre=fused, accumulate=accumulate, **_attrs(cfg))
  # logits = proj * inv_r * scale + bias, proj = v @ phi.
  g_scale = jnp.sum(g_logits * proj_TxK * inv_r_T[:, None], axis=0)
  g_phi = jnp.sum(g_phi_parts, axis=0)[:, :k]
  return g_x, g_phi, g_scale, jnp.sum(g_logits, axis=0)


_coefficients.defvjp(_coef_fwd, _coef_bwd)


def _mhc_args(x, phi, alpha, bias):
  f32 = lambda a: a.astype(F32)
  return f32(x), f32(phi), column_scales(f32(alpha), x.shape[-2]), f32(bias)


def mhc_maps(x_TxNxC, phi_PxK, alpha_3, bias_K, cfg: MHCConfig):
  return _coefficients(*_mhc_args(x_TxNxC, phi_PxK, alpha_3, bias_K), cfg, False)


def mhc_connection_pre(x_TxNxC, phi_PxK, alpha_3, bias_K, cfg: MHCConfig):
  return _first_half(_coefficients, x_TxNxC, _mhc_args(x_TxNxC, phi_PxK, alpha_3, bias_K), cfg)


def _first_half(kernel, x, args, static):
  """``(u, Context)`` from a coefficient kernel: fused for fp32 x, else the maps, then ``pre``."""
  if x.dtype != F32:  # the fused kernel's u and passed x would be fp32
    maps = kernel(*args, static, False)
    return pre(x, maps[0]), Context(x, *maps, NAME)
  h_pre, h_post, h_res, u, x_passed = kernel(*args, static, True)
  return u, Context(x_passed, h_pre, h_post, h_res, NAME)


# -------------------------------------------------------------------------- HC maps


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _hc_coefficients(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, eps: float, fused: bool):
  """HC's maps from fp32 x (dynamic HC, w ``[C, N + 2]``); with ``fused``, then u and x."""
  return _hc_fwd(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, eps, fused)[0]


def _hc_fwd(x, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, eps, fused):
  t, n, c = x.shape
  w_KxC, gates = jnp.swapaxes(w_CxK, 0, 1), jnp.stack([s_alpha, s_beta])
  h_pre, h_post, h_res, u, z, y, r = _call(
      "hc_fwd", (_f32((t, n)), _f32((t, n)), _f32((t, n, n)), _f32((t, c) if fused else (1,)),
                 _f32((t, n, n + 2)), _f32((t, n, n + 2)), _f32((t, n))),
      x, w_KxC, gates, a_pre, b_post, a_res, with_pre=fused, eps=np.float32(eps))
  outs = (h_pre, h_post, h_res) + ((u, x) if fused else ())
  return outs, (x, w_KxC, gates, h_pre, z, y, r)


def _hc_bwd(eps, fused, res, grads):
  del eps
  x, w_KxC, gates, h_pre, z_TxNxK, y, r = res
  g_pre, g_post, g_res = grads[:3]
  g_u = grads[3] if fused else jnp.zeros((1,), F32)
  g_in, accumulate = _accumulating(grads[4] if fused else None)
  g_x, g_w_parts, g_pre_all = _call(
      "hc_bwd", (_f32(x.shape), _f32((library.GRAD_SLOTS,) + w_KxC.shape), _f32(h_pre.shape)),
      x, w_KxC, gates, h_pre, z_TxNxK, y, r, g_pre, g_post, g_res, g_u, g_in,
      with_pre=fused, accumulate=accumulate)
  # h_pre = s_alpha z[:, :, 0] + a_pre, h_post = s_beta z[:, :, 1] + b_post,
  # h_res^T = s_alpha z[:, :, 2:] + a_res.
  g_res_t = jnp.swapaxes(g_res, 1, 2)
  g_s_alpha = jnp.sum(g_pre_all * z_TxNxK[..., 0]) + jnp.sum(g_res_t * z_TxNxK[..., 2:])
  g_s_beta = jnp.sum(g_post * z_TxNxK[..., 1])
  return (g_x, jnp.swapaxes(jnp.sum(g_w_parts, axis=0), 0, 1), jnp.sum(g_pre_all, axis=0),
          jnp.sum(g_post, axis=0), jnp.sum(g_res_t, axis=0), g_s_alpha, g_s_beta)


_hc_coefficients.defvjp(_hc_fwd, _hc_bwd)


def _hc_args(x, w, a_pre, b_post, a_res, s_alpha, s_beta):
  return tuple(jnp.asarray(a, F32) for a in (x, w, a_pre, b_post, a_res, s_alpha, s_beta))


def hc_maps(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, rms_eps: float):
  return _hc_coefficients(*_hc_args(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta),
                          float(rms_eps), False)


def hc_connection_pre(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, rms_eps: float):
  args = _hc_args(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta)
  return _first_half(_hc_coefficients, x_TxNxC, args, float(rms_eps))
