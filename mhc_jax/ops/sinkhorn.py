"""Sinkhorn-Knopp projection onto doubly stochastic matrices (SPEC sections 2 and 4).

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

from mhc_jax.ops import _checks

GRAD_MODES = ("exact", "autodiff", "implicit")


def _column_softmax(logits_XxNxN: jax.Array) -> jax.Array:
  shifted = logits_XxNxN - jnp.max(logits_XxNxN, axis=-2, keepdims=True)
  e = jnp.exp(shifted)
  return e / jnp.sum(e, axis=-2, keepdims=True)


def _forward(logits_XxNxN: jax.Array, num_iters: int, eps: float) -> jax.Array:
  m = _column_softmax(logits_XxNxN) + eps
  m = m / (jnp.sum(m, axis=-1, keepdims=True) + eps)

  def body(_, m):
    m = m / (jnp.sum(m, axis=-2, keepdims=True) + eps)
    return m / (jnp.sum(m, axis=-1, keepdims=True) + eps)

  return lax.fori_loop(0, num_iters - 1, body, m)


def _normalize_vjp(y, g, s, axis: int, eps: float):
  """VJP of ``y = x / (sum(x, axis) + eps)`` given the output y and the sum s."""
  return (g - jnp.sum(g * y, axis=axis, keepdims=True)) / (s + eps)


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
  row0 = jnp.sum(m, axis=-1, keepdims=True)
  m = m / (row0 + eps)
  steps = num_iters - 1
  col_sums = jnp.zeros((steps,) + m.shape[:-2] + (1, m.shape[-1]), m.dtype)
  row_sums = jnp.zeros((steps,) + m.shape[:-1] + (1,), m.dtype)

  def replay(k, carry):
    m, cols, rows = carry
    c = jnp.sum(m, axis=-2, keepdims=True)
    m = m / (c + eps)
    r = jnp.sum(m, axis=-1, keepdims=True)
    m = m / (r + eps)
    return m, cols.at[k].set(c), rows.at[k].set(r)

  if steps:
    m, col_sums, row_sums = lax.fori_loop(0, steps, replay, (m, col_sums, row_sums))

  # Walk back: undo each normalization to rebuild the iterate it consumed.
  def reverse(j, carry):
    y, gy = carry
    k = steps - 1 - j
    r, c = row_sums[k], col_sums[k]
    gx = _normalize_vjp(y, gy, r, -1, eps)
    x = y * (r + eps)
    gz = _normalize_vjp(x, gx, c, -2, eps)
    return x * (c + eps), gz

  y, gy = lax.fori_loop(0, steps, reverse, (m, g)) if steps else (m, g)
  g_m = _normalize_vjp(y, gy, row0, -1, eps)
  g_logits = y0 * (g_m - jnp.sum(g_m * y0, axis=-2, keepdims=True))
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
  n = p.shape[-1]
  pg = p * g
  r = jnp.sum(pg, axis=-1)
  c = jnp.sum(pg, axis=-2)
  eye = jnp.eye(n, dtype=p.dtype)
  a_mat = eye - jnp.einsum("...ki,...kj->...ij", p, p) + 1.0 / n
  rhs = c - jnp.einsum("...ij,...i->...j", p, r)
  b = jnp.linalg.solve(a_mat, rhs[..., None])[..., 0]
  a = r - jnp.einsum("...ij,...j->...i", p, b)
  return (p * (g - a[..., :, None] - b[..., None, :]),)


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
  _checks.check_choice("grad", grad, GRAD_MODES)
  _checks.check_int("num_iters", num_iters, 1)
  _checks.check_nonnegative("eps", eps)
  logits = jnp.asarray(logits)
  _checks.check_float("logits", logits)
  if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
    raise ValueError(f"logits must have shape [..., N, N], got {logits.shape}")
  x = logits.astype(_checks.compute_dtype(logits.dtype))
  if grad == "autodiff":
    return _forward(x, num_iters, float(eps))
  if grad == "implicit":
    return _sinkhorn_implicit(x, num_iters, float(eps))
  return _sinkhorn_exact(x, num_iters, float(eps))
