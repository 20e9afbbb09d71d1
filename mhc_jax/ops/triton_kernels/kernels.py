"""Triton kernels (plain ``triton.language``) for the Sinkhorn and the post/res merge.

No JAX here: :mod:`mhc_jax.ops.triton_kernels` launches them through jax-triton, and the
tests run them in Triton's own interpreter on a CPU. Layouts (row-major, contiguous):

  Sinkhorn: logits, P and their cotangents ``[T, N*N]``, entry ``i*N + j`` is H[i, j]
            (columns sum over i, rows over j), fp32.
  post:     x ``[T, N*C]``, y ``[T, C]`` in the stream dtype; h_post ``[T, N]``,
            h_res ``[T, N*N]`` fp32. The math is fp32; stores take the output's dtype.

The N x N matrices of ``BLOCK_T`` tokens are ``[BLOCK_T, NP, NP]`` tiles (NP = N rounded
up to a power of two, the padding masked to zero). Arguments follow jax-triton's order:
inputs, then scalars, then outputs, then the ``tl.constexpr`` parameters.
"""

import triton
import triton.language as tl

# ------------------------------------------------------------------------ Sinkhorn


@triton.jit
def _matrix_offsets(T, N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr):
  """Offsets of this program's ``[BLOCK_T, NP, NP]`` tile in ``[T, N*N]`` and the valid mask."""
  t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
  i = tl.arange(0, NP)
  offs = t[:, None, None] * (N * N) + i[None, :, None] * N + i[None, None, :]
  valid = (t[:, None, None] < T) & (i[None, :, None] < N) & (i[None, None, :] < N)
  return offs, valid


@triton.jit
def _col_sums(m):
  return tl.sum(m, axis=1)[:, None, :]


@triton.jit
def _row_sums(m):
  return tl.sum(m, axis=2)[:, :, None]


@triton.jit
def _div(a, b, valid):
  """``a / b`` on the valid entries, 0 on the padding (where b may be 0)."""
  return tl.where(valid, a / b, 0.0)


@triton.jit
def _first(l, valid, EPS: tl.constexpr):
  """(column softmax y0, first iterate M_0), DeepSeek's sequence (``mhc_jax.ops.sinkhorn``)."""
  top = tl.max(tl.where(valid, l, -float("inf")), axis=1)[:, None, :]
  e = tl.where(valid, tl.exp(l - top), 0.0)
  y0 = _div(e, _col_sums(e), valid)
  m = tl.where(valid, y0 + EPS, 0.0)
  return y0, _div(m, _row_sums(m) + EPS, valid)


@triton.jit
def _step(m, valid, EPS: tl.constexpr):
  m = _div(m, _col_sums(m) + EPS, valid)
  return _div(m, _row_sums(m) + EPS, valid)


@triton.jit
def sinkhorn_fwd_kernel(l_ptr, T, p_ptr, N: tl.constexpr, NP: tl.constexpr, ITERS: tl.constexpr,
                        EPS: tl.constexpr, BLOCK_T: tl.constexpr):
  offs, valid = _matrix_offsets(T, N, NP, BLOCK_T)
  _, m = _first(tl.load(l_ptr + offs, mask=valid, other=0.0), valid, EPS)
  for _ in range(ITERS - 1):
    m = _step(m, valid, EPS)
  tl.store(p_ptr + offs, m, mask=valid)


@triton.jit
def sinkhorn_bwd_kernel(l_ptr, g_ptr, T, gl_ptr, N: tl.constexpr, NP: tl.constexpr,
                        ITERS: tl.constexpr, EPS: tl.constexpr, BLOCK_T: tl.constexpr):
  """Exact VJP: walking the steps backwards, each step's input is replayed from M_0 on-chip."""
  offs, valid = _matrix_offsets(T, N, NP, BLOCK_T)
  y0, m0 = _first(tl.load(l_ptr + offs, mask=valid, other=0.0), valid, EPS)
  g = tl.load(g_ptr + offs, mask=valid, other=0.0)
  for s in range(ITERS - 1):
    a = m0
    for _ in range(ITERS - 2 - s):
      a = _step(a, valid, EPS)
    c = _col_sums(a) + EPS
    b = _div(a, c, valid)
    r = _row_sums(b) + EPS
    out = _div(b, r, valid)
    g_b = _div(g - _row_sums(g * out), r, valid)
    g = _div(g_b - _col_sums(g_b * b), c, valid)
  r0 = _row_sums(tl.where(valid, y0 + EPS, 0.0)) + EPS
  g_m = _div(g - _row_sums(g * m0), r0, valid)
  tl.store(gl_ptr + offs, y0 * (g_m - _col_sums(g_m * y0)), mask=valid)


# ---------------------------------------------------------------------------- post


@triton.jit
def _post_rows(T, N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr):
  t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
  k = tl.arange(0, NP)
  return t, k, (t[:, None] < T) & (k[None, :] < N)


@triton.jit
def post_fwd_kernel(x_ptr, y_ptr, hp_ptr, hr_ptr, T, C, o_ptr, N: tl.constexpr, NP: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
  """x'[t, k] = sum_j h_res[t, k, j] x[t, j] + h_post[t, k] y[t]."""
  t, k, tk = _post_rows(T, N, NP, BLOCK_T)
  hp = tl.load(hp_ptr + t[:, None] * N + k[None, :], mask=tk, other=0.0)
  for c0 in range(0, C, BLOCK_C):
    c = c0 + tl.arange(0, BLOCK_C)
    tc = (t[:, None] < T) & (c[None, :] < C)
    y = tl.load(y_ptr + t[:, None] * C + c[None, :], mask=tc, other=0.0).to(tl.float32)
    acc = hp[:, :, None] * y[:, None, :]
    for j in tl.static_range(N):
      x_j = tl.load(x_ptr + t[:, None] * (N * C) + j * C + c[None, :], mask=tc, other=0.0)
      h_j = tl.load(hr_ptr + t[:, None] * (N * N) + k[None, :] * N + j, mask=tk, other=0.0)
      acc += h_j[:, :, None] * x_j.to(tl.float32)[:, None, :]
    o = o_ptr + t[:, None, None] * (N * C) + k[None, :, None] * C + c[None, None, :]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=tk[:, :, None] & (c < C)[None, None, :])


@triton.jit
def post_bwd_kernel(x_ptr, y_ptr, hp_ptr, hr_ptr, g_ptr, T, C, gx_ptr, gy_ptr, ghp_ptr, ghr_ptr,
                    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
  """One pass over x, y and g: g_x, g_y stored per chunk; g_h_post, g_h_res kept in registers."""
  t, k, tk = _post_rows(T, N, NP, BLOCK_T)
  hp = tl.load(hp_ptr + t[:, None] * N + k[None, :], mask=tk, other=0.0)
  acc_p = tl.zeros((BLOCK_T, NP), dtype=tl.float32)
  acc_r = tl.zeros((BLOCK_T, NP, NP), dtype=tl.float32)  # [t, k, j]
  jj = tl.arange(0, NP)
  for c0 in range(0, C, BLOCK_C):
    c = c0 + tl.arange(0, BLOCK_C)
    tc = (t[:, None] < T) & (c[None, :] < C)
    tkc = tk[:, :, None] & (c < C)[None, None, :]
    y = tl.load(y_ptr + t[:, None] * C + c[None, :], mask=tc, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + t[:, None, None] * (N * C) + k[None, :, None] * C + c[None, None, :],
                mask=tkc, other=0.0).to(tl.float32)
    g_y = tl.sum(hp[:, :, None] * g, axis=1)
    tl.store(gy_ptr + t[:, None] * C + c[None, :], g_y.to(gy_ptr.dtype.element_ty), mask=tc)
    acc_p += tl.sum(g * y[:, None, :], axis=2)
    for j in tl.static_range(N):
      x_j = tl.load(x_ptr + t[:, None] * (N * C) + j * C + c[None, :], mask=tc, other=0.0)
      h_j = tl.load(hr_ptr + t[:, None] * (N * N) + k[None, :] * N + j, mask=tk, other=0.0)
      g_x = tl.sum(h_j[:, :, None] * g, axis=1)
      tl.store(gx_ptr + t[:, None] * (N * C) + j * C + c[None, :], g_x.to(gx_ptr.dtype.element_ty),
               mask=tc)
      d_j = tl.sum(g * x_j.to(tl.float32)[:, None, :], axis=2)  # [t, k]: d h_res[k, j]
      acc_r += tl.where(jj[None, None, :] == j, d_j[:, :, None], 0.0)
  tl.store(ghp_ptr + t[:, None] * N + k[None, :], acc_p, mask=tk)
  tl.store(ghr_ptr + t[:, None, None] * (N * N) + k[None, :, None] * N + jj[None, None, :], acc_r,
           mask=tk[:, :, None] & (jj < N)[None, None, :])


def sinkhorn_blocks(n: int) -> tuple[int, int]:
  """(NP, BLOCK_T) for the Sinkhorn kernels: ~1-2K matrix entries per program."""
  np_ = triton.next_power_of_2(n)
  return np_, max(1, min(128, 1024 // (np_ * np_)))


def post_blocks(n: int, c: int) -> tuple[int, int, int]:
  """(NP, BLOCK_T, BLOCK_C) for the post kernels: ~4K stream elements per tile."""
  np_ = triton.next_power_of_2(n)
  block_c = min(256, triton.next_power_of_2(c))
  return np_, max(1, 4096 // (block_c * np_)), block_c
