"""Hyper-Connections (ByteDance, arXiv 2409.19606): the unconstrained baseline (docs/math.md §4).

Dynamic HC, per token, with x_bar_i = RMSNorm(x_i) (no learned scale: it would only
rescale ``w``):
  H_pre[i]  = s_alpha * tanh(x_bar_i . w[:, 0]) + a_pre[i]
  H_post[i] = s_beta  * tanh(x_bar_i . w[:, 1]) + b_post[i]
  H_res     = (s_alpha * tanh(x_bar @ w[:, 2:]) + a_res)^T   (row j of x_bar @ w[:, 2:] from stream j)
The transpose is the HC paper's ``A_r^T H``. Static HC drops the tanh terms. The maps come
back in the same form as :func:`mhc_jax.ops.mhc_coefficients`, so ``mhc_pre``,
``mhc_post`` and ``connection_post`` apply unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc_jax import validation
from mhc_jax.ops import connection, dispatch
from mhc_jax.ops.streams import Context


def hc_static_init(n: int, layer_index) -> tuple[jax.Array, jax.Array, jax.Array]:
  """HC's static init: ``a_pre = e_{k mod n}``, ``b_post = 1``, ``a_res = I`` (a Pre-Norm residual)."""
  a_pre = jax.nn.one_hot(jnp.asarray(layer_index) % n, n, dtype=jnp.float32)
  return a_pre, jnp.ones((n,), jnp.float32), jnp.eye(n, dtype=jnp.float32)


def _checked(x, a_pre, b_post, a_res, w, s_alpha, s_beta, rms_eps):
  """x over tokens ``[T, N, C]``, its batch shape, and the checked parameters."""
  x = connection.check_stream(x)
  n, c = x.shape[-2:]
  a_pre, b_post, a_res = map(jnp.asarray, (a_pre, b_post, a_res))
  validation.check_shape("a_pre", a_pre, (n,))
  validation.check_shape("b_post", b_post, (n,))
  validation.check_shape("a_res", a_res, (n, n))
  validation.check_nonnegative("rms_eps", rms_eps)
  if w is not None:
    w = jnp.asarray(w)
    validation.check_shape("w", w, (c, n + 2), f"[C, N+2] for N={n}, C={c}")
  s_alpha, s_beta = jnp.asarray(s_alpha), jnp.asarray(s_beta)
  return connection.tokens(x, 2), x.shape[:-2], (w, a_pre, b_post, a_res, s_alpha, s_beta), float(rms_eps)


def _static_maps(x_TxNxC, a_pre, b_post, a_res):
  t, n = x_TxNxC.shape[:2]
  cdt = validation.compute_dtype(x_TxNxC.dtype, a_res.dtype)
  return (jnp.broadcast_to(a_pre.astype(cdt), (t, n)), jnp.broadcast_to(b_post.astype(cdt), (t, n)),
          jnp.broadcast_to(a_res.T.astype(cdt), (t, n, n)))


def hc_coefficients(
    x: jax.Array,
    a_pre: jax.Array,
    b_post: jax.Array,
    a_res: jax.Array,
    w: jax.Array | None = None,
    s_alpha: jax.Array | float = 0.0,
    s_beta: jax.Array | float = 0.0,
    *,
    rms_eps: float = 1e-6,
    implementation: str = "auto",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """HC mixing maps for x ``[..., N, C]``; ``w=None`` gives static HC.

  Args:
    x: ``[..., N, C]`` stream state.
    a_pre, b_post: ``[N]`` static parts; a_res: ``[N, N]`` (HC paper layout, transposed on use).
    w: ``[C, N + 2]`` dynamic weights, columns [pre | post | res (N)]; None for static HC.
    s_alpha, s_beta: scalar gates of the dynamic parts.
    implementation: the backend of dynamic HC's maps (``"xla"`` or ``"cpu"``; see
      :mod:`mhc_jax.ops.dispatch`). Static HC's maps are the static parts, broadcast.

  Returns:
    ``(h_pre [..., N], h_post [..., N], h_res [..., N, N])`` in fp32 (fp64 for fp64 x), paper layout.
  """
  x_TxNxC, batch, params, rms_eps = _checked(x, a_pre, b_post, a_res, w, s_alpha, s_beta, rms_eps)
  if w is None:
    dispatch.check_implementation(implementation)
    return connection.unflatten(_static_maps(x_TxNxC, *params[1:4]), batch)
  backend = dispatch.select(implementation, ("hc_maps",), x_TxNxC)
  maps = dispatch.run(backend, lambda x, *p: backend.hc_maps(x, *p, rms_eps), x_TxNxC, (x_TxNxC,), params)
  return connection.unflatten(maps, batch)


def hc_connection_pre(x: jax.Array, a_pre: jax.Array, b_post: jax.Array, a_res: jax.Array,
                      w: jax.Array | None = None, s_alpha: jax.Array | float = 0.0,
                      s_beta: jax.Array | float = 0.0, *, rms_eps: float = 1e-6,
                      implementation: str = "auto") -> tuple[jax.Array, Context]:
  """The first half of an HC connection: ``(u, ctx)``, as :func:`mhc_jax.ops.mhc_connection_pre`.

  Takes :func:`hc_coefficients`' arguments; finish with ``connection_post(F(u), ctx)``.
  """
  x_TxNxC, batch, params, rms_eps = _checked(x, a_pre, b_post, a_res, w, s_alpha, s_beta, rms_eps)
  if w is None:  # static HC: the maps are the static parts; only pre and post run on the backend
    backend = dispatch.select(implementation, connection.CONNECTION_OPS, x_TxNxC)
    return connection.from_maps(backend, x_TxNxC, _static_maps(x_TxNxC, *params[1:4]), batch)
  backend = dispatch.select(implementation, ("hc_maps",) + connection.CONNECTION_OPS, x_TxNxC)
  return connection.first_half(backend, "hc", x_TxNxC, params, (rms_eps,), batch)
