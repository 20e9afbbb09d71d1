"""Plain-jnp statements of every op: the spec that kernels and tests are checked against.

These follow the paper's unfused equations literally (normalize first, then matmul; a
Python loop for Sinkhorn) and are differentiated by plain autodiff. They are slow and
memory-hungry on purpose: clarity over speed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sinkhorn_reference(logits, num_iters: int = 20, eps: float = 1e-6):
  """DeepSeek's sequence (docs/math.md §3), unrolled in Python."""
  m = jax.nn.softmax(logits, axis=-2) + eps
  m = m / (m.sum(-1, keepdims=True) + eps)
  for _ in range(num_iters - 1):
    m = m / (m.sum(-2, keepdims=True) + eps)
    m = m / (m.sum(-1, keepdims=True) + eps)
  return m


def mhc_coefficients_reference(
    x, phi, alpha, bias, *, num_iters=20, sinkhorn_eps=1e-6, pre_eps=1e-6, post_mult=2.0,
    rms_eps=1e-6):
  """Paper Eqs. 7-8 in their plain order: RMSNorm(vec(x)) first, then the matmul."""
  n, c = x.shape[-2:]
  v = x.reshape(x.shape[:-2] + (n * c,))
  v_normed = v / jnp.sqrt(jnp.mean(v * v, axis=-1, keepdims=True) + rms_eps)
  h = v_normed @ phi
  h_pre = jax.nn.sigmoid(alpha[0] * h[..., :n] + bias[:n]) + pre_eps
  h_post = post_mult * jax.nn.sigmoid(alpha[1] * h[..., n:2 * n] + bias[n:2 * n])
  res = alpha[2] * h[..., 2 * n:] + bias[2 * n:]
  h_res = sinkhorn_reference(res.reshape(res.shape[:-1] + (n, n)), num_iters, sinkhorn_eps)
  return h_pre, h_post, h_res


def mhc_pre_reference(x, h_pre):
  """u = sum_i H_pre[i] x_i."""
  return jnp.einsum("...n,...nc->...c", h_pre, x)


def mhc_post_reference(x, y, h_post, h_res):
  """x'_i = sum_j H_res[i, j] x_j + H_post[i] y."""
  return jnp.einsum("...ij,...jc->...ic", h_res, x) + h_post[..., :, None] * y[..., None, :]


def hc_coefficients_reference(x, w, s_alpha, s_beta, a_pre, b_post, a_res, *, rms_eps=1e-6):
  """Dynamic HC (docs/math.md §4), written per stream as in the HC paper."""
  n = x.shape[-2]
  rows_pre, rows_post, rows_res = [], [], []
  for i in range(n):
    xi = x[..., i, :]
    xbar = xi / jnp.sqrt(jnp.mean(xi * xi, axis=-1, keepdims=True) + rms_eps)
    rows_pre.append(s_alpha * jnp.tanh(xbar @ w[:, 0]) + a_pre[i])
    rows_post.append(s_beta * jnp.tanh(xbar @ w[:, 1]) + b_post[i])
    rows_res.append(s_alpha * jnp.tanh(xbar @ w[:, 2:]) + a_res[i])  # row i from stream i
  res_t = jnp.stack(rows_res, axis=-2)
  return jnp.stack(rows_pre, -1), jnp.stack(rows_post, -1), jnp.swapaxes(res_t, -1, -2)
