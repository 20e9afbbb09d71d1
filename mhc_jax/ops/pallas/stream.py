"""Pallas kernels (Triton lowering) for the two stream ops, forward and backward.

  pre:   u = sum_i h_pre[i] x_i                     (paper Eq. 16 applied)
  post:  x'_k = sum_j h_res[k, j] x_j + h_post[k] y   (the post/res merge, docs/math.md §5)

Public functions take the ops' shapes (``x [..., N, C]``). Inside, tokens are flattened
to T, streams to ``x [T, N*C]`` (a free reshape of ``[T, N, C]``),
maps as ``[T, N]`` / ``[T, N*N]`` (fp32). Each program owns ``block_t`` tokens and walks
C in chunks of ``block_c`` columns, so every kernel reads and writes each stream element
exactly once; the backward's reductions over C (``dh_pre``, ``dh_post``, ``dh_res``) stay in
registers for the whole walk. Any N (streams are unrolled in Python) and any C and T
(masked loads and stores); the math is fp32, stored values take the stream dtype.

On a GPU the kernels compile through Triton; elsewhere they run in Pallas interpret mode
(same kernels, same numbers, slow). ``lax.platform_dependent`` picks at lowering time, so
``.lower(lowering_platforms=("cuda",))`` from a CPU machine, under an abstract GPU
(:func:`mhc_jax.ops.aot.abstract_gpu`), yields the Triton kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc_jax.ops.pallas._common import (F32, call, load_maps, load_tile, rows, size, store_maps,
                                        store_tile, walk)


def _blocks(n: int, c: int) -> tuple[int, int]:
  """(block_t, block_c): ~2-4K elements per stream tile, fewer rows for larger N."""
  block_c = min(256, pl.next_power_of_2(c))
  return max(1, min(16, 4096 // (block_c * n))), block_c


def _call(kernel, out_shape, t: int, n: int, c: int, *args):
  block_t, block_c = _blocks(n, c)
  return call(kernel, out_shape, t, block_t, *args, n=n, c=c, block_c=block_c)


# ----------------------------------------------------------------------------- pre


def _pre_fwd_kernel(x_ref, h_ref, u_ref, *, n, c, block_t, block_c):
  r, rmask = rows(block_t, x_ref)
  h = load_maps(h_ref, r, rmask, n)

  def body(cols, cmask, carry):
    mask = rmask[:, None] & cmask[None, :]
    u = sum(h[i][:, None] * load_tile(x_ref, r, i * c + cols, mask) for i in range(n))
    store_tile(u_ref, r, cols, mask, u)
    return carry

  walk(c, block_c, body, 0)


def _pre_bwd_kernel(x_ref, h_ref, g_ref, gx_ref, gh_ref, *, n, c, block_t, block_c):
  r, rmask = rows(block_t, x_ref)
  h = load_maps(h_ref, r, rmask, n)

  def body(cols, cmask, acc):
    mask = rmask[:, None] & cmask[None, :]
    g = load_tile(g_ref, r, cols, mask)
    out = []
    for i in range(n):
      store_tile(gx_ref, r, i * c + cols, mask, h[i][:, None] * g)
      out.append(acc[i] + jnp.sum(load_tile(x_ref, r, i * c + cols, mask) * g, axis=1))
    return tuple(out)

  acc = walk(c, block_c, body, tuple(jnp.zeros((block_t,), F32) for _ in range(n)))
  store_maps(gh_ref, r, rmask, acc)


def pre_fwd(x_XxNxC, h_pre_XxN):
  """``u [..., C]`` from x ``[..., N, C]`` and h_pre ``[..., N]``."""
  *batch, n, c = x_XxNxC.shape
  t = size(batch)
  out = jax.ShapeDtypeStruct((t, c), x_XxNxC.dtype)
  u = _call(_pre_fwd_kernel, out, t, n, c, x_XxNxC.reshape(t, n * c), h_pre_XxN.reshape(t, n))
  return u.reshape(*batch, c)


def pre_bwd(x_XxNxC, h_pre_XxN, g_XxC):
  """``(g_x, g_h_pre)`` in the dtypes of x and h_pre."""
  *batch, n, c = x_XxNxC.shape
  t = size(batch)
  out = (jax.ShapeDtypeStruct((t, n * c), x_XxNxC.dtype), jax.ShapeDtypeStruct((t, n), h_pre_XxN.dtype))
  g_x, g_h = _call(_pre_bwd_kernel, out, t, n, c, x_XxNxC.reshape(t, n * c), h_pre_XxN.reshape(t, n),
                   g_XxC.reshape(t, c))
  return g_x.reshape(x_XxNxC.shape), g_h.reshape(h_pre_XxN.shape)


# ---------------------------------------------------------------------------- post


def _post_fwd_kernel(x_ref, y_ref, hp_ref, hr_ref, o_ref, *, n, c, block_t, block_c):
  r, rmask = rows(block_t, x_ref)
  hp = load_maps(hp_ref, r, rmask, n)
  hr = load_maps(hr_ref, r, rmask, n * n)  # hr[k * n + j] = h_res[k, j]

  def body(cols, cmask, carry):
    mask = rmask[:, None] & cmask[None, :]
    y = load_tile(y_ref, r, cols, mask)
    xs = [load_tile(x_ref, r, j * c + cols, mask) for j in range(n)]
    for k in range(n):
      out = hp[k][:, None] * y + sum(hr[k * n + j][:, None] * xs[j] for j in range(n))
      store_tile(o_ref, r, k * c + cols, mask, out)
    return carry

  walk(c, block_c, body, 0)


def _post_bwd_kernel(x_ref, y_ref, hp_ref, hr_ref, g_ref, gx_ref, gy_ref, ghp_ref, ghr_ref,
                     *, n, c, block_t, block_c):
  r, rmask = rows(block_t, x_ref)
  hp = load_maps(hp_ref, r, rmask, n)
  hr = load_maps(hr_ref, r, rmask, n * n)

  def body(cols, cmask, acc):
    acc_p, acc_r = acc
    mask = rmask[:, None] & cmask[None, :]
    y = load_tile(y_ref, r, cols, mask)
    gs = [load_tile(g_ref, r, k * c + cols, mask) for k in range(n)]
    store_tile(gy_ref, r, cols, mask, sum(hp[k][:, None] * gs[k] for k in range(n)))
    acc_p = tuple(acc_p[k] + jnp.sum(gs[k] * y, axis=1) for k in range(n))
    new_r = list(acc_r)
    for j in range(n):
      x_j = load_tile(x_ref, r, j * c + cols, mask)
      store_tile(gx_ref, r, j * c + cols, mask, sum(hr[k * n + j][:, None] * gs[k] for k in range(n)))
      for k in range(n):
        new_r[k * n + j] = acc_r[k * n + j] + jnp.sum(gs[k] * x_j, axis=1)
    return acc_p, tuple(new_r)

  zeros = lambda m: tuple(jnp.zeros((block_t,), F32) for _ in range(m))
  acc_p, acc_r = walk(c, block_c, body, (zeros(n), zeros(n * n)))
  store_maps(ghp_ref, r, rmask, acc_p)
  store_maps(ghr_ref, r, rmask, acc_r)


def post_fwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN):
  """``x' [..., N, C]`` (x's dtype) from x, y ``[..., C]``, h_post ``[..., N]``, h_res ``[..., N, N]``."""
  *batch, n, c = x_XxNxC.shape
  t = size(batch)
  out = jax.ShapeDtypeStruct((t, n * c), x_XxNxC.dtype)
  o = _call(_post_fwd_kernel, out, t, n, c, x_XxNxC.reshape(t, n * c), y_XxC.reshape(t, c),
            h_post_XxN.reshape(t, n), h_res_XxNxN.reshape(t, n * n))
  return o.reshape(x_XxNxC.shape)


def post_bwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN, g_XxNxC):
  """``(g_x, g_y, g_h_post, g_h_res)``, each in its input's dtype."""
  *batch, n, c = x_XxNxC.shape
  t = size(batch)
  args = (x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN)
  flat = [a.reshape(t, -1) for a in args + (g_XxNxC,)]
  out = tuple(jax.ShapeDtypeStruct(f.shape, a.dtype) for f, a in zip(flat, args))
  grads = _call(_post_bwd_kernel, out, t, n, c, *flat)
  return tuple(g.reshape(a.shape) for g, a in zip(grads, args))
