"""Hyper-Connections (ByteDance, arXiv 2409.19606): the unconstrained baseline (SPEC section 3).

Dynamic HC, per token, with x_bar_i = RMSNorm(x_i) (no learned scale: it would only
rescale ``w``):
  H_pre[i]  = s_alpha * tanh(x_bar_i . w[:, 0]) + a_pre[i]
  H_post[i] = s_beta  * tanh(x_bar_i . w[:, 1]) + b_post[i]
  H_res     = (s_alpha * tanh(x_bar @ w[:, 2:]) + a_res)^T   (row j of x_bar @ w[:, 2:] from stream j)
The transpose is the HC paper's ``A_r^T H``. Static HC drops the tanh terms. The maps come
back in the same form as :func:`mhc_jax.ops.mhc_coefficients`, so ``mhc_pre`` and
``mhc_post`` apply unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc_jax import validation as _checks
from mhc_jax.ops import cpu
from mhc_jax.ops._projection import rms_projection
from mhc_jax.ops.mhc import _check_stream, _kernel_outputs, _with_input


def hc_static_init(n: int, layer_index) -> tuple[jax.Array, jax.Array, jax.Array]:
  """HC's static init: ``a_pre = e_{k mod n}``, ``b_post = 1``, ``a_res = I`` (a Pre-Norm residual)."""
  a_pre = jax.nn.one_hot(jnp.asarray(layer_index) % n, n, dtype=jnp.float32)
  return a_pre, jnp.ones((n,), jnp.float32), jnp.eye(n, dtype=jnp.float32)


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
    with_pre: bool = False,
    pass_stream: bool = False,
) -> tuple[jax.Array, ...]:
  """HC mixing maps for x ``[..., N, C]``; ``w=None`` gives static HC.

  Args:
    x: ``[..., N, C]`` stream state.
    a_pre, b_post: ``[N]`` static parts; a_res: ``[N, N]`` (HC paper layout, transposed on use).
    w: ``[C, N + 2]`` dynamic weights, columns [pre | post | res (N)]; None for static HC.
    s_alpha, s_beta: scalar gates of the dynamic parts.
    implementation: as in :func:`mhc_jax.ops.mhc_coefficients`. ``"cpu"`` runs dynamic HC's
      maps as one C++ kernel (projection, RMS, tanh, static parts, and the pre-apply if
      ``with_pre``); other names run them as XLA ops, then ``mhc_pre`` with that name.
    with_pre, pass_stream: also return u, then x (see :func:`mhc_jax.ops.mhc_coefficients`).

  Returns:
    ``(h_pre [..., N], h_post [..., N], h_res [..., N, N])`` in fp32 (fp64 for fp64 x),
    paper layout; then u ``[..., C]`` in x's dtype if ``with_pre``, then x if ``pass_stream``.
  """
  x = jnp.asarray(x)
  impl, n, c = _check_stream(x, implementation)
  _checks.check_shape("a_pre", a_pre, (n,))
  _checks.check_shape("b_post", b_post, (n,))
  _checks.check_shape("a_res", a_res, (n, n))
  batch = x.shape[:-2]
  cdt = _checks.compute_dtype(x.dtype, a_res.dtype)
  if w is None:
    maps = (jnp.broadcast_to(a_pre.astype(cdt), batch + (n,)),
            jnp.broadcast_to(b_post.astype(cdt), batch + (n,)),
            jnp.broadcast_to(a_res.T.astype(cdt), batch + (n, n)))
  else:
    _checks.check_shape("w", w, (c, n + 2), f"[C, N+2] for N={n}, C={c}")
    if impl == "cpu":
      fused = x.dtype == jnp.float32  # else the kernel's u and passed x would be fp32
      asked = (with_pre and fused, pass_stream and fused)
      f32 = lambda a: jnp.asarray(a, jnp.float32)
      out = _kernel_outputs(cpu.hc_coefficients(f32(x).reshape(-1, n, c), f32(w), f32(a_pre), f32(b_post),
                                                f32(a_res), f32(s_alpha), f32(s_beta), float(rms_eps),
                                                *asked), x, *asked)
      if fused:
        return out
      maps = out
    else:
      z_XxNx2pN = jnp.tanh(rms_projection(x, w.astype(cdt), float(rms_eps)))
      h_pre = s_alpha * z_XxNx2pN[..., 0] + a_pre
      h_post = s_beta * z_XxNx2pN[..., 1] + b_post
      h_res = jnp.swapaxes(s_alpha * z_XxNx2pN[..., 2:] + a_res, -1, -2)
      maps = (h_pre.astype(cdt), h_post.astype(cdt), h_res.astype(cdt))
  return _with_input(maps, x, impl, with_pre, pass_stream)
