"""Pallas kernels (Triton lowering) for the mHC coefficients, forward and backward.

Forward, one pass over the stream state v = vec(x) ``[T, P]`` (P = N*C) per block of tokens:

  h = v @ phi and sum(v^2) together, walking P in chunks (phi padded to a power-of-two Kp)
  proj = h / r,  r = sqrt(mean(v^2) + rms_eps)                  (RMS after the GEMM)
  logits = proj * scale + bias                                  (scale: the alpha gates per column)
  h_pre = sigmoid + pre_eps,  h_post = post_mult * sigmoid,  h_res = Sinkhorn(t_max) in registers

It also writes ``proj [T, Kp]`` and ``1/r [T]`` for the backward (a few floats per token).
The backward kernel recomputes the logits from ``proj`` and runs the whole per-token
chain in registers: sigmoid gradients and the exact Sinkhorn VJP. The Sinkhorn replays its
iterations on-chip: for each step, walking backwards, it rebuilds that step's input from
the first iterate (quadratic in t_max, ~200 tiny steps at t_max = 20, but no memory at all).
Out come ``g_logits`` and the gradient wrt ``h`` already scaled by 1/r, plus the RMS term;
the two GEMMs of the backward (``g_h @ phi^T`` and the token contraction ``v^T @ g_h``)
stay with XLA's GEMMs.

The N x N Sinkhorn matrices live as N*N vectors of ``block_t`` tokens (entry ``i*N + j`` is
H_res[i, j]: columns sum over i, rows over j), so every reduction over N is a few adds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mhc_jax.ops.pallas._common import F32, call, load_maps, load_tile, rows, store_maps, store_tile, walk
from mhc_jax.ops.streams import MHCConfig


def padded_width(n: int) -> int:
  """Kp: K = N*N + 2N rounded up to a power of two >= 16 (Triton tiles and dot minimums)."""
  return max(16, pl.next_power_of_2(n * n + 2 * n))


def _blocks(kp: int) -> tuple[int, int]:
  """(block_t, block_p): 16 <= both (Triton's dot minimum); fewer tokens for wide Kp."""
  return (64 if kp <= 32 else 32), 64


# ------------------------------------------------------------- per-token math on vectors


def _sigmoid(z):
  return 1.0 / (1.0 + jnp.exp(-z))


def _col_sums(m, n):
  return [sum(m[i * n + j] for i in range(n)) for j in range(n)]


def _row_sums(m, n):
  return [sum(m[i * n + j] for j in range(n)) for i in range(n)]


def _col_norm(m, n, eps):
  s = _col_sums(m, n)
  return tuple(m[i * n + j] / (s[j] + eps) for i in range(n) for j in range(n))


def _row_norm(m, n, eps):
  s = _row_sums(m, n)
  return tuple(m[i * n + j] / (s[i] + eps) for i in range(n) for j in range(n))


def _column_softmax(l, n):
  out = [None] * (n * n)
  for j in range(n):
    top = functools.reduce(jnp.maximum, [l[i * n + j] for i in range(n)])
    e = [jnp.exp(l[i * n + j] - top) for i in range(n)]
    total = sum(e)
    for i in range(n):
      out[i * n + j] = e[i] / total
  return tuple(out)


def _fori(steps, body, init):
  return lax.fori_loop(0, steps, body, init) if steps else init


def _sinkhorn_first(l, n, eps):
  """(column softmax y0, first iterate M_0) as in ``mhc_jax.ops.sinkhorn``."""
  y0 = _column_softmax(l, n)
  return y0, _row_norm([y + eps for y in y0], n, eps)


def _sinkhorn_step(m, n, eps):
  return _row_norm(_col_norm(m, n, eps), n, eps)


def _sinkhorn(l, n, num_iters, eps):
  _, m = _sinkhorn_first(l, n, eps)
  return _fori(num_iters - 1, lambda _, m: _sinkhorn_step(m, n, eps), m)


def _normalize_vjp(y, g, s, n, eps, axis_sums):
  """VJP of ``y = x / (sums(x) + eps)`` given y, its cotangent g and the sums s of x."""
  gy = axis_sums([gi * yi for gi, yi in zip(g, y)], n)
  if axis_sums is _row_sums:
    return tuple((g[i * n + j] - gy[i]) / (s[i] + eps) for i in range(n) for j in range(n))
  return tuple((g[i * n + j] - gy[j]) / (s[j] + eps) for i in range(n) for j in range(n))


def _sinkhorn_vjp(l, g, n, num_iters, eps):
  """Exact VJP of :func:`_sinkhorn` wrt the logits, replaying iterates from M_0."""
  y0, m0 = _sinkhorn_first(l, n, eps)
  steps = num_iters - 1

  def back(s, g):
    a = lax.fori_loop(0, steps - 1 - s, lambda _, m: _sinkhorn_step(m, n, eps), m0)  # its input
    c = _col_sums(a, n)
    b = _col_norm(a, n, eps)
    r = _row_sums(b, n)
    out = _row_norm(b, n, eps)
    g_b = _normalize_vjp(out, g, r, n, eps, _row_sums)
    return _normalize_vjp(b, g_b, c, n, eps, _col_sums)

  g = _fori(steps, back, tuple(g))
  r0 = _row_sums([y + eps for y in y0], n)
  g_m = _normalize_vjp(m0, g, r0, n, eps, _row_sums)
  gy = _col_sums([gi * yi for gi, yi in zip(g_m, y0)], n)
  return [y0[i * n + j] * (g_m[i * n + j] - gy[j]) for i in range(n) for j in range(n)]


# ------------------------------------------------------------------------- kernels


def _column(tile, cols, k):
  """Column k of a ``[block_t, Kp]`` register tile as a ``block_t`` vector."""
  return jnp.sum(jnp.where(cols[None, :] == k, tile, 0.0), axis=1)


def _logits(proj, scale_ref, bias_ref, cols):
  scale, bias = pltriton.load(scale_ref.at[cols]), pltriton.load(bias_ref.at[cols])
  return proj * scale[None, :] + bias[None, :], scale


def _coef_fwd_kernel(v_ref, phi_ref, scale_ref, bias_ref, pre_ref, post_ref, res_ref, proj_ref,
                     inv_r_ref, *, cfg, p, kp, block_t, block_p):
  n = cfg.n
  r, rmask = rows(block_t, v_ref)
  kcols = jnp.arange(kp)

  def body(cols, cmask, carry):
    acc, sumsq = carry
    v = load_tile(v_ref, r, cols, rmask[:, None] & cmask[None, :])
    w = load_tile(phi_ref, cols, kcols, cmask[:, None] & (kcols < kp)[None, :])
    return acc + jnp.dot(v, w, preferred_element_type=F32), sumsq + jnp.sum(v * v, axis=1)

  acc, sumsq = walk(p, block_p, body, (jnp.zeros((block_t, kp), F32), jnp.zeros((block_t,), F32)))
  inv_r = lax.rsqrt(sumsq / p + cfg.rms_eps)
  proj = acc * inv_r[:, None]
  store_tile(proj_ref, r, kcols, rmask[:, None] & (kcols < kp)[None, :], proj)
  store_maps(inv_r_ref, r, rmask, [inv_r])

  logits, _ = _logits(proj, scale_ref, bias_ref, kcols)
  l = [_column(logits, kcols, k) for k in range(n * n + 2 * n)]
  store_maps(pre_ref, r, rmask, [_sigmoid(z) + cfg.pre_eps for z in l[:n]])
  store_maps(post_ref, r, rmask, [cfg.post_mult * _sigmoid(z) for z in l[n:2 * n]])
  store_maps(res_ref, r, rmask, _sinkhorn(l[2 * n:], n, cfg.num_iters, cfg.sinkhorn_eps))


def _coef_bwd_kernel(proj_ref, inv_r_ref, scale_ref, bias_ref, gpre_ref, gpost_ref, gres_ref,
                     glog_ref, gh_ref, coef_ref, *, cfg, p, kp, block_t):
  n = cfg.n
  r, rmask = rows(block_t, proj_ref)
  kcols = jnp.arange(kp)
  mask = rmask[:, None] & (kcols < kp)[None, :]
  proj = load_tile(proj_ref, r, kcols, mask)
  inv_r = load_maps(inv_r_ref, r, rmask, 1)[0]
  logits, scale = _logits(proj, scale_ref, bias_ref, kcols)
  l = [_column(logits, kcols, k) for k in range(n * n + 2 * n)]

  g_pre, g_post = load_maps(gpre_ref, r, rmask, n), load_maps(gpost_ref, r, rmask, n)
  g = []
  for k in range(n):
    s = _sigmoid(l[k])
    g.append(g_pre[k] * s * (1.0 - s))
  for k in range(n):
    s = _sigmoid(l[n + k])
    g.append(g_post[k] * cfg.post_mult * s * (1.0 - s))
  g += _sinkhorn_vjp(l[2 * n:], load_maps(gres_ref, r, rmask, n * n), n, cfg.num_iters,
                     cfg.sinkhorn_eps)

  g_logits = sum(jnp.where(kcols[None, :] == k, gk[:, None], 0.0) for k, gk in enumerate(g))
  g_proj = g_logits * scale[None, :]
  store_tile(glog_ref, r, kcols, mask, g_logits)
  store_tile(gh_ref, r, kcols, mask, g_proj * inv_r[:, None])
  # proj = h / r with 1/r = (mean(v^2) + eps)^(-1/2): d(1/r)/dv = -v / (P r^3).
  store_maps(coef_ref, r, rmask, [jnp.sum(g_proj * proj, axis=1) * inv_r * inv_r / p])


# ------------------------------------------------------------------------ wrappers


def _fwd(v_TxP, phi_PxKp, scale_Kp, bias_Kp, cfg: MHCConfig):
  t, p = v_TxP.shape
  kp = phi_PxKp.shape[1]
  block_t, block_p = _blocks(kp)
  n = cfg.n
  maps = lambda m: jax.ShapeDtypeStruct((t, m), F32)
  out = (maps(n), maps(n), maps(n * n), maps(kp), maps(1))
  h_pre, h_post, h_res, proj, inv_r = call(
      _coef_fwd_kernel, out, t, block_t, v_TxP, phi_PxKp, scale_Kp, bias_Kp,
      cfg=cfg, p=p, kp=kp, block_p=block_p)
  return (h_pre, h_post, h_res), (v_TxP, phi_PxKp, scale_Kp, bias_Kp, proj, inv_r)


def _bwd(cfg: MHCConfig, res, grads):
  v_TxP, phi_PxKp, scale_Kp, bias_Kp, proj_TxKp, inv_r_Tx1 = res
  t, p = v_TxP.shape
  kp = phi_PxKp.shape[1]
  block_t, _ = _blocks(kp)
  full = jax.ShapeDtypeStruct((t, kp), F32)
  g_logits, g_h, coef = call(
      _coef_bwd_kernel, (full, full, jax.ShapeDtypeStruct((t, 1), F32)), t, block_t,
      proj_TxKp, inv_r_Tx1, scale_Kp, bias_Kp, *grads, cfg=cfg, p=p, kp=kp)
  g_v = jnp.dot(g_h, phi_PxKp.T) - coef * v_TxP.astype(F32)
  g_phi = jnp.dot(v_TxP.astype(F32).T, g_h)
  g_scale = jnp.sum(g_logits * proj_TxKp, axis=0)
  g_bias = jnp.sum(g_logits, axis=0)
  return g_v.astype(v_TxP.dtype), g_phi, g_scale, g_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def coefficients(v_TxP, phi_PxKp, scale_Kp, bias_Kp, cfg: MHCConfig):
  """``(h_pre [T, N], h_post [T, N], h_res [T, N*N] row-major)`` in fp32.

  Args:
    v_TxP: the flattened stream state, any float dtype (read once, math in fp32).
    phi_PxKp: fp32 projection, columns [pre | post | res | zero padding], Kp = padded_width(N).
    scale_Kp: fp32 per-column gate (alpha_pre / alpha_post / alpha_res; 0 on the padding).
    bias_Kp: fp32 bias (0 on the padding).
    cfg: the static parameters.
  """
  return _fwd(v_TxP, phi_PxKp, scale_Kp, bias_Kp, cfg)[0]


coefficients.defvjp(_fwd, _bwd)
