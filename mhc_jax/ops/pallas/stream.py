"""Pallas kernels (Triton lowering) for the two stream ops, forward and backward.

  pre:   u = sum_i h_pre[i] x_i                     (paper Eq. 16 applied)
  post:  x'_k = sum_j h_res[k, j] x_j + h_post[k] y   (the post/res merge, SPEC section 5)

Public functions take the ops' shapes (``x [..., N, C]``). Inside, tokens are flattened
to T, streams to ``x [T, N*C]`` (a free reshape of ``[T, N, C]``),
maps as ``[T, N]`` / ``[T, N*N]`` (fp32). Each program owns ``block_t`` tokens and walks
C in chunks of ``block_c`` columns, so every kernel reads and writes each stream element
exactly once; the backward's reductions over C (``dh_pre``, ``dh_post``, ``dh_res``) stay in
registers for the whole walk. Any N (streams are unrolled in Python) and any C and T
(masked loads and stores); the math is fp32, stored values take the stream dtype.

On a GPU the kernels compile through Triton; elsewhere they run in Pallas interpret mode
(same kernels, same numbers, slow). ``lax.platform_dependent`` picks at lowering time, so
``.lower(lowering_platforms=("cuda",))`` from a CPU machine yields the Triton kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

_F32 = jnp.float32


def _size(batch) -> int:
  return int(functools.reduce(lambda a, b: a * b, batch, 1))


def _blocks(n: int, c: int) -> tuple[int, int, int]:
  """(block_t, block_c, num_warps): ~2-4K elements per stream tile, fewer rows for larger N."""
  block_c = min(256, pl.next_power_of_2(c))
  block_t = max(1, min(16, 4096 // (block_c * n)))
  return block_t, block_c, 4


def _call(kernel, out_shape, t: int, n: int, c: int, *args):
  """Runs ``kernel`` over ceil(T / block_t) programs: Triton on GPUs, interpret elsewhere."""
  block_t, block_c, num_warps = _blocks(n, c)
  body = functools.partial(kernel, n=n, c=c, block_t=block_t, block_c=block_c)

  def run(*args, interpret: bool):
    return pl.pallas_call(
        body,
        out_shape=out_shape,
        grid=(pl.cdiv(t, block_t),),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=2),
        interpret=interpret,
        name=kernel.__name__,
    )(*args)

  return lax.platform_dependent(*args, cuda=functools.partial(run, interpret=False),
                                rocm=functools.partial(run, interpret=False),
                                default=functools.partial(run, interpret=True))


def _rows(block_t: int, ref):
  rows = pl.program_id(0) * block_t + jnp.arange(block_t)
  return rows, rows < ref.shape[0]


def _load_cols(ref, rows, cols, mask):
  """``ref[rows, cols]`` as fp32, zeros outside."""
  return pltriton.load(ref.at[rows[:, None], cols[None, :]], mask=mask, other=0.0).astype(_F32)


def _store_cols(ref, rows, cols, mask, value):
  pltriton.store(ref.at[rows[:, None], cols[None, :]], value.astype(ref.dtype), mask=mask)


def _load_maps(ref, rows, rmask, count: int):
  """Columns 0..count-1 of a ``[T, count]`` map as ``count`` fp32 vectors of ``block_t``."""
  return [pltriton.load(ref.at[rows, k], mask=rmask, other=0.0).astype(_F32) for k in range(count)]


def _store_maps(ref, rows, rmask, values):
  for k, v in enumerate(values):
    pltriton.store(ref.at[rows, k], v.astype(ref.dtype), mask=rmask)


def _walk_c(c: int, block_c: int, body, init):
  """``body(cols, cmask, carry)`` over the C chunks."""
  def step(k, carry):
    cols = k * block_c + jnp.arange(block_c)
    return body(cols, cols < c, carry)
  return lax.fori_loop(0, pl.cdiv(c, block_c), step, init)


# ----------------------------------------------------------------------------- pre


def _pre_fwd_kernel(x_ref, h_ref, u_ref, *, n, c, block_t, block_c):
  rows, rmask = _rows(block_t, x_ref)
  h = _load_maps(h_ref, rows, rmask, n)

  def body(cols, cmask, carry):
    mask = rmask[:, None] & cmask[None, :]
    u = sum(h[i][:, None] * _load_cols(x_ref, rows, i * c + cols, mask) for i in range(n))
    _store_cols(u_ref, rows, cols, mask, u)
    return carry

  _walk_c(c, block_c, body, 0)


def _pre_bwd_kernel(x_ref, h_ref, g_ref, gx_ref, gh_ref, *, n, c, block_t, block_c):
  rows, rmask = _rows(block_t, x_ref)
  h = _load_maps(h_ref, rows, rmask, n)

  def body(cols, cmask, acc):
    mask = rmask[:, None] & cmask[None, :]
    g = _load_cols(g_ref, rows, cols, mask)
    out = []
    for i in range(n):
      _store_cols(gx_ref, rows, i * c + cols, mask, h[i][:, None] * g)
      out.append(acc[i] + jnp.sum(_load_cols(x_ref, rows, i * c + cols, mask) * g, axis=1))
    return tuple(out)

  acc = _walk_c(c, block_c, body, tuple(jnp.zeros((block_t,), _F32) for _ in range(n)))
  _store_maps(gh_ref, rows, rmask, acc)


def pre_fwd(x_XxNxC, h_pre_XxN):
  """``u [..., C]`` from x ``[..., N, C]`` and h_pre ``[..., N]``."""
  *batch, n, c = x_XxNxC.shape
  t = _size(batch)
  out = jax.ShapeDtypeStruct((t, c), x_XxNxC.dtype)
  u = _call(_pre_fwd_kernel, out, t, n, c, x_XxNxC.reshape(t, n * c), h_pre_XxN.reshape(t, n))
  return u.reshape(*batch, c)


def pre_bwd(x_XxNxC, h_pre_XxN, g_XxC):
  """``(g_x, g_h_pre)`` in the dtypes of x and h_pre."""
  *batch, n, c = x_XxNxC.shape
  t = _size(batch)
  out = (jax.ShapeDtypeStruct((t, n * c), x_XxNxC.dtype), jax.ShapeDtypeStruct((t, n), h_pre_XxN.dtype))
  g_x, g_h = _call(_pre_bwd_kernel, out, t, n, c, x_XxNxC.reshape(t, n * c), h_pre_XxN.reshape(t, n),
                   g_XxC.reshape(t, c))
  return g_x.reshape(x_XxNxC.shape), g_h.reshape(h_pre_XxN.shape)


# ---------------------------------------------------------------------------- post


def _post_fwd_kernel(x_ref, y_ref, hp_ref, hr_ref, o_ref, *, n, c, block_t, block_c):
  rows, rmask = _rows(block_t, x_ref)
  hp = _load_maps(hp_ref, rows, rmask, n)
  hr = _load_maps(hr_ref, rows, rmask, n * n)  # hr[k * n + j] = h_res[k, j]

  def body(cols, cmask, carry):
    mask = rmask[:, None] & cmask[None, :]
    y = _load_cols(y_ref, rows, cols, mask)
    xs = [_load_cols(x_ref, rows, j * c + cols, mask) for j in range(n)]
    for k in range(n):
      out = hp[k][:, None] * y + sum(hr[k * n + j][:, None] * xs[j] for j in range(n))
      _store_cols(o_ref, rows, k * c + cols, mask, out)
    return carry

  _walk_c(c, block_c, body, 0)


def _post_bwd_kernel(x_ref, y_ref, hp_ref, hr_ref, g_ref, gx_ref, gy_ref, ghp_ref, ghr_ref,
                     *, n, c, block_t, block_c):
  rows, rmask = _rows(block_t, x_ref)
  hp = _load_maps(hp_ref, rows, rmask, n)
  hr = _load_maps(hr_ref, rows, rmask, n * n)

  def body(cols, cmask, acc):
    acc_p, acc_r = acc
    mask = rmask[:, None] & cmask[None, :]
    y = _load_cols(y_ref, rows, cols, mask)
    gs = [_load_cols(g_ref, rows, k * c + cols, mask) for k in range(n)]
    _store_cols(gy_ref, rows, cols, mask, sum(hp[k][:, None] * gs[k] for k in range(n)))
    acc_p = tuple(acc_p[k] + jnp.sum(gs[k] * y, axis=1) for k in range(n))
    new_r = list(acc_r)
    for j in range(n):
      x_j = _load_cols(x_ref, rows, j * c + cols, mask)
      _store_cols(gx_ref, rows, j * c + cols, mask, sum(hr[k * n + j][:, None] * gs[k] for k in range(n)))
      for k in range(n):
        new_r[k * n + j] = acc_r[k * n + j] + jnp.sum(gs[k] * x_j, axis=1)
    return acc_p, tuple(new_r)

  zeros = lambda m: tuple(jnp.zeros((block_t,), _F32) for _ in range(m))
  acc_p, acc_r = _walk_c(c, block_c, body, (zeros(n), zeros(n * n)))
  _store_maps(ghp_ref, rows, rmask, acc_p)
  _store_maps(ghr_ref, rows, rmask, acc_r)


def post_fwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN):
  """``x' [..., N, C]`` (x's dtype) from x, y ``[..., C]``, h_post ``[..., N]``, h_res ``[..., N, N]``."""
  *batch, n, c = x_XxNxC.shape
  t = _size(batch)
  out = jax.ShapeDtypeStruct((t, n * c), x_XxNxC.dtype)
  o = _call(_post_fwd_kernel, out, t, n, c, x_XxNxC.reshape(t, n * c), y_XxC.reshape(t, c),
            h_post_XxN.reshape(t, n), h_res_XxNxN.reshape(t, n * n))
  return o.reshape(x_XxNxC.shape)


def post_bwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN, g_XxNxC):
  """``(g_x, g_y, g_h_post, g_h_res)``, each in its input's dtype."""
  *batch, n, c = x_XxNxC.shape
  t = _size(batch)
  args = (x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN)
  flat = [a.reshape(t, -1) for a in args + (g_XxNxC,)]
  out = tuple(jax.ShapeDtypeStruct(f.shape, a.dtype) for f, a in zip(flat, args))
  grads = _call(_post_bwd_kernel, out, t, n, c, *flat)
  return tuple(g.reshape(a.shape) for g, a in zip(grads, args))
