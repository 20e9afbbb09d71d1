"""Sinkhorn-Knopp projection onto doubly stochastic matrices (docs/math.md §3).

Paper layout: ``H[i, j]`` is how much output stream i reads from input stream j, so row
sums are the forward gain and column sums the backward gain. Rows are normalized last,
so row sums are exact (up to ``eps``) and the truncation error sits in the column sums.

The default sequence is DeepSeek's (TileKernels ``sinkhorn_normalize_ref``):

  M = column_softmax(logits) + eps
  M = M / (row_sum(M) + eps)
  repeat num_iters - 1 times:
    M = M / (column_sum(M) + eps)
    M = M / (row_sum(M) + eps)

With ``eps = 0`` this is the paper's Eq. 9: exp, then ``num_iters`` column/row passes.

Gradient modes:
  * ``"exact"`` (default): a custom VJP that saves only the logits. The backward replays
    the forward, keeping just the 2*(num_iters-1) normalizer vectors (not the matrices),
    then walks the iterations backwards, rebuilding each iterate from the next one by
    undoing its normalization. Saved memory between forward and backward does not grow
    with ``num_iters``; the backward's transient memory is N times smaller than autodiff's.
  * ``"autodiff"``: reverse mode through ``lax.fori_loop`` (stores every iterate).
  * ``"implicit"``: the gradient at the fixed point (an N x N linear solve per token),
    evaluated at the truncated output. It is the gradient of the limit map, not of the
    ``num_iters``-step map: exact for converged inputs, but for non-converged ones (large
    logits, few iterations) it is off by up to ~1e-2 for N(0, 1) logits at 20 iterations
    and more for larger logits (see ``experiments/bench_sinkhorn.py`` and the tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mhc_jax import validation

GRAD_MODES = ("exact", "autodiff", "implicit")

# The core works on [N (i), N (j), T]: the token axis last, so that the sums over the tiny
# N axes are across whole vectors of tokens (a [T, N, N] layout reduces over a 4-wide minor
# axis, which is several times slower on CPU). Columns sum over axis 0, rows over axis 1.
_COL, _ROW = 0, 1
_UNROLL = 4  # iterations per loop trip: fewer loop overheads, still a small program


def _sum(m, axis: int):
  """Sum over a tiny N axis as N - 1 adds of slices (keepdims).

  XLA:CPU fuses a forward chain of these adds and divides into a few loop fusions (2x
  faster than reduce ops). The backward's sums use :func:`_sum_by_matmul` instead.
  """
  parts = [lax.index_in_dim(m, i, axis) for i in range(m.shape[axis])]
  return functools.reduce(jnp.add, parts)


def _sum_by_matmul(m, axis: int):
  """The same sum (keepdims) as a 0/1 selector matmul ``[N, N*N] @ [N*N, T]``.

  For the backward: there XLA:CPU runs a reduce op over a non-minor axis of ``[N, N, T]``
  ~8x slower than an elementwise pass, and slice adds would be recomputed inside every
  consumer; the tiny matmul is neither (Sinkhorn backward 4.5 -> 2.8 ms at T = 4096, N = 4).
  HIGHEST precision keeps GPUs from rounding the summands to TF32.
  """
  n = m.shape[0]
  eye, ones = jnp.eye(n, dtype=m.dtype), jnp.ones((1, n), m.dtype)
  select = jnp.kron(eye, ones) if axis == _ROW else jnp.kron(ones, eye)
  sums = jnp.dot(select, m.reshape(n * n, -1), precision=lax.Precision.HIGHEST)
  return sums[:, None, :] if axis == _ROW else sums[None]


def _column_softmax(logits):
  e = jnp.exp(logits - jnp.max(logits, axis=_COL, keepdims=True))
  return e / _sum(e, _COL)


def _fori(steps: int, body, init, unroll: int = _UNROLL):
  """``body(k, carry)`` for k in range(steps): the remainder of the unrolling first, then the loop.

  Peeling the remainder *before* the loop makes the result the loop's own output, a
  materialized buffer. Peeled after it (``lax.fori_loop``'s way), the last iterations are
  cheap elementwise ops that XLA:CPU fuses into every consumer of the result, recomputing
  them per element: the mHC post/res merge that reads H_res ran 2-4x slower that way.
  """
  rest = steps % unroll
  for k in range(rest):
    init = body(k, init)
  return lax.fori_loop(rest, steps, body, init, unroll=unroll) if steps > rest else init


def _forward(logits, num_iters: int, eps: float):
  m = _column_softmax(logits) + eps
  m = m / (_sum(m, _ROW) + eps)

  def body(_, m):
    m = m / (_sum(m, _COL) + eps)
    return m / (_sum(m, _ROW) + eps)

  return _fori(num_iters - 1, body, m)


def _normalize_vjp(y, g, s, axis: int, eps: float):
  """VJP of ``y = x / (sum(x, axis) + eps)`` given the output y and the sum s."""
  return (g - _sum_by_matmul(g * y, axis)) / (s + eps)


# ----------------------------------------------------------------------------- exact


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _sinkhorn_exact(logits, num_iters, eps):
  return _forward(logits, num_iters, eps)


def _sinkhorn_exact_fwd(logits, num_iters, eps):
  return _forward(logits, num_iters, eps), logits


def _sinkhorn_exact_bwd(num_iters, eps, logits, g):
  # Replay the forward, recording only the normalizers of every pass.
  y0 = _column_softmax(logits)
  m = y0 + eps
  row0 = _sum(m, _ROW)
  m = m / (row0 + eps)
  steps = num_iters - 1
  n, _, t = m.shape
  col_sums = jnp.zeros((steps, 1, n, t), m.dtype)
  row_sums = jnp.zeros((steps, n, 1, t), m.dtype)

  def replay(k, carry):
    m, cols, rows = carry
    c = _sum(m, _COL)
    m = m / (c + eps)
    r = _sum(m, _ROW)
    m = m / (r + eps)
    return m, cols.at[k].set(c), rows.at[k].set(r)

  m, col_sums, row_sums = _fori(steps, replay, (m, col_sums, row_sums))

  # Walk back: undo each normalization to rebuild the iterate it consumed.
  def reverse(j, carry):
    y, gy = carry
    k = steps - 1 - j
    r, c = row_sums[k], col_sums[k]
    gx = _normalize_vjp(y, gy, r, _ROW, eps)
    x = y * (r + eps)
    gz = _normalize_vjp(x, gx, c, _COL, eps)
    return x * (c + eps), gz

  y, gy = _fori(steps, reverse, (m, g), unroll=1)
  g_m = _normalize_vjp(y, gy, row0, _ROW, eps)
  g_logits = y0 * (g_m - _sum_by_matmul(g_m * y0, _COL))
  return (g_logits,)


_sinkhorn_exact.defvjp(_sinkhorn_exact_fwd, _sinkhorn_exact_bwd)


# -------------------------------------------------------------------------- implicit


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _sinkhorn_implicit(logits, num_iters, eps):
  return _forward(logits, num_iters, eps)


def _sinkhorn_implicit_fwd(logits, num_iters, eps):
  p = _forward(logits, num_iters, eps)
  return p, p


def _sinkhorn_implicit_bwd(num_iters, eps, p, g):
  # P = diag(e^f) exp(logits) diag(e^g) with unit row and column sums. The adjoint is
  # dlogits = P * (G - a 1^T - 1 b^T) where a + P b = rowsum(P*G), P^T a + b = colsum(P*G).
  # Eliminating a gives (I - P^T P) b = c - P^T r, singular along 1; adding 1 1^T / N
  # picks the solution with sum(b) = 0 (the gradient does not depend on that choice).
  del num_iters, eps
  p_TxNxN, g_TxNxN = jnp.moveaxis(p, -1, 0), jnp.moveaxis(g, -1, 0)
  n = p_TxNxN.shape[-1]
  pg = p_TxNxN * g_TxNxN
  r = jnp.sum(pg, axis=-1)
  c = jnp.sum(pg, axis=-2)
  eye = jnp.eye(n, dtype=p.dtype)
  a_mat = eye - jnp.einsum("tki,tkj->tij", p_TxNxN, p_TxNxN) + 1.0 / n
  rhs = c - jnp.einsum("tij,ti->tj", p_TxNxN, r)
  b = jnp.linalg.solve(a_mat, rhs[..., None])[..., 0]
  a = r - jnp.einsum("tij,tj->ti", p_TxNxN, b)
  grad = p_TxNxN * (g_TxNxN - a[..., :, None] - b[..., None, :])
  return (jnp.moveaxis(grad, 0, -1),)


_sinkhorn_implicit.defvjp(_sinkhorn_implicit_fwd, _sinkhorn_implicit_bwd)


# ---------------------------------------------------------------------------- public


def sinkhorn_knopp(
    logits: jax.Array,
    num_iters: int = 20,
    eps: float = 1e-6,
    grad: str = "exact",
) -> jax.Array:
  """Projects ``exp(logits)`` onto (nearly) doubly stochastic matrices.

  Args:
    logits: ``[..., N, N]`` in paper layout, any leading batch shape, any float dtype.
    num_iters: column/row passes (``t_max``), a Python int >= 1.
    eps: DeepSeek's stabilizer; 0 gives the paper's Eq. 9 exactly.
    grad: ``"exact"`` | ``"autodiff"`` | ``"implicit"`` (see the module docstring).

  Returns:
    ``[..., N, N]`` in fp32 (fp64 for fp64 input): the math always runs in at least fp32.
  """
  validation.check_choice("grad", grad, GRAD_MODES)
  validation.check_int("num_iters", num_iters, 1)
  validation.check_nonnegative("eps", eps)
  logits = jnp.asarray(logits)
  validation.check_float("logits", logits)
  if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
    raise ValueError(f"logits must have shape [..., N, N], got {logits.shape}")
  batch, n = logits.shape[:-2], logits.shape[-1]
  x_NxNxT = jnp.moveaxis(logits.astype(validation.compute_dtype(logits.dtype)).reshape(-1, n, n), 0, -1)
  fn = {"autodiff": _forward, "implicit": _sinkhorn_implicit, "exact": _sinkhorn_exact}[grad]
  p_NxNxT = fn(x_NxNxT, num_iters, float(eps))
  return jnp.moveaxis(p_NxNxT, -1, 0).reshape(batch + (n, n))
