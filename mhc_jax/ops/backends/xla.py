"""The ``"xla"`` backend: plain jnp with custom VJPs. Runs on any platform, any float dtype (fp64 too).

It is also the form every other backend is tested against, next to ``reference.py``.

On XLA:CPU the fastest forms are (measured at T=4096, N=4, C=256, fp32):
  * sums over the stream axis as N unrolled elementwise terms (one loop fusion; a
    broadcast-multiply-reduce or a batched einsum over [..., N, C] is 3-5x slower);
  * contractions over C as batched dots (an elementwise multiply fused into a reduce over
    the minor axis runs ~6x slower than the dot).
Dots use HIGHEST precision so GPUs keep them fp32 (no tf32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc_jax.ops.sinkhorn import sinkhorn_knopp
from mhc_jax.ops.streams import MHCConfig, column_scales, rms_projection, saving_inputs
from mhc_jax.validation import compute_dtype

NAME = "xla"
OPS = frozenset({"mhc_maps", "hc_maps", "pre", "post"})


def unavailable(*, allow_build: bool) -> str | None:
  del allow_build
  return None


def unsupported(op: str, x: jax.ShapeDtypeStruct, cfg: MHCConfig | None) -> str | None:
  del op, x, cfg
  return None


# ----------------------------------------------------------------------------- maps


def mhc_maps(x_TxNxC, phi_PxK, alpha_3, bias_K, cfg: MHCConfig, sinkhorn=None):
  """``(h_pre, h_post, h_res)`` of docs/math.md §2 in the compute dtype (fp32, or fp64).

  ``sinkhorn(logits_TxNxN)``: another implementation of the Sinkhorn (the triton backend's).
  """
  t, n = x_TxNxC.shape[:2]
  cdt = compute_dtype(x_TxNxC.dtype, phi_PxK.dtype)
  scale_K = column_scales(alpha_3.astype(cdt), n)
  logits = rms_projection(x_TxNxC, phi_PxK, cfg.rms_eps, 2) * scale_K + bias_K.astype(cdt)
  h_pre = jax.nn.sigmoid(logits[:, :n]) + cfg.pre_eps
  h_post = cfg.post_mult * jax.nn.sigmoid(logits[:, n:2 * n])
  res_logits = logits[:, 2 * n:].reshape(t, n, n)
  if sinkhorn is not None:
    return h_pre, h_post, sinkhorn(res_logits)
  return h_pre, h_post, sinkhorn_knopp(res_logits, num_iters=cfg.num_iters, eps=cfg.sinkhorn_eps,
                                       grad=cfg.sinkhorn_grad)


def hc_maps(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, rms_eps: float):
  """Dynamic HC's maps (docs/math.md §4) in the compute dtype, paper layout."""
  cdt = compute_dtype(x_TxNxC.dtype, a_res.dtype)
  z_TxNxK = jnp.tanh(rms_projection(x_TxNxC, w_CxK.astype(cdt), rms_eps))
  h_pre = s_alpha * z_TxNxK[..., 0] + a_pre
  h_post = s_beta * z_TxNxK[..., 1] + b_post
  h_res = jnp.swapaxes(s_alpha * z_TxNxK[..., 2:] + a_res, -1, -2)
  return h_pre.astype(cdt), h_post.astype(cdt), h_res.astype(cdt)


# ------------------------------------------------------------------------ pre / post


def _mix(w_XxN, s_XxNxC):
  """``sum_i w[..., i] * s[..., i, :]`` -> ``[..., C]``, unrolled over the N streams."""
  return sum(w_XxN[..., i, None] * s_XxNxC[..., i, :] for i in range(s_XxNxC.shape[-2]))


def _mix_streams(m_XxNxM, s_XxNxC):
  """``out[..., k, :] = sum_i m[..., i, k] * s[..., i, :]`` -> ``[..., M, C]``, unrolled over N."""
  return sum(m_XxNxM[..., i, :, None] * s_XxNxC[..., i, None, :] for i in range(s_XxNxC.shape[-2]))


def _dot_c(a_XxNxC, b_XxC):
  """``sum_c a[..., i, c] * b[..., c]`` -> ``[..., N]``."""
  return jnp.einsum("...ic,...c->...i", a_XxNxC, b_XxC, precision="highest")


def _pre_fwd(x_XxNxC, h_pre_XxN):
  cdt = compute_dtype(x_XxNxC.dtype, h_pre_XxN.dtype)
  return _mix(h_pre_XxN.astype(cdt), x_XxNxC.astype(cdt)).astype(x_XxNxC.dtype)


def _pre_bwd(x_XxNxC, h_pre_XxN, g_XxC):
  cdt = compute_dtype(x_XxNxC.dtype, h_pre_XxN.dtype)
  g = g_XxC.astype(cdt)
  g_x = h_pre_XxN.astype(cdt)[..., None] * g[..., None, :]
  g_h = _dot_c(x_XxNxC.astype(cdt), g)
  return g_x.astype(x_XxNxC.dtype), g_h.astype(h_pre_XxN.dtype)


def _post_fwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN):
  cdt = compute_dtype(x_XxNxC.dtype, h_res_XxNxN.dtype)
  # x'_k = sum_j h_res[k, j] x_j + h_post[k] y: mix with the transposed h_res.
  mixed = _mix_streams(jnp.swapaxes(h_res_XxNxN.astype(cdt), -1, -2), x_XxNxC.astype(cdt))
  out = mixed + h_post_XxN.astype(cdt)[..., None] * y_XxC.astype(cdt)[..., None, :]
  return out.astype(x_XxNxC.dtype)


def _post_bwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN, g_XxNxC):
  cdt = compute_dtype(x_XxNxC.dtype, h_res_XxNxN.dtype)
  g = g_XxNxC.astype(cdt)
  g_x = _mix_streams(h_res_XxNxN.astype(cdt), g)
  g_y = _mix(h_post_XxN.astype(cdt), g)
  g_h_post = _dot_c(g, y_XxC.astype(cdt))
  g_h_res = jnp.einsum("...ic,...jc->...ij", g, x_XxNxC.astype(cdt), precision="highest")
  return (g_x.astype(x_XxNxC.dtype), g_y.astype(y_XxC.dtype), g_h_post.astype(h_post_XxN.dtype),
          g_h_res.astype(h_res_XxNxN.dtype))


pre = saving_inputs(_pre_fwd, _pre_bwd)
"""``u = sum_i h_pre[i] x_i`` in x's dtype (math in fp32 or fp64)."""
post = saving_inputs(_post_fwd, _post_bwd)
"""``x'_k = sum_j h_res[k, j] x_j + h_post[k] y`` in x's dtype."""
