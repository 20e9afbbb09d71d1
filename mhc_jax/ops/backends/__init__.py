"""Backends: one module per implementation of the mHC and HC ops, all filling one interface.

:mod:`mhc_jax.ops.dispatch` imports a backend module only when an op asks for it, and holds
the whole ``"auto"`` policy. A backend module defines:

  NAME                     its ``implementation=`` name
  OPS                      the ops it runs, a subset of ``dispatch.OPS``:
                           "mhc_maps", "hc_maps" (dynamic HC), "pre", "post"
  unavailable(*, allow_build) -> str | None
                           why it cannot run here at all (platform, missing package, kernels
                           not built), else None; it may build only when ``allow_build``
  unsupported(op, x, cfg) -> str | None
                           why it cannot run ``op`` on a stream ``x`` (shape and dtype of
                           ``[T, N, C]``) with ``cfg`` (an ``MHCConfig``, or None), else None

and, for the ops in OPS, on flattened tokens (every op has its own custom VJP, or is
differentiable as written):

  mhc_maps(x_TxNxC, phi_PxK, alpha_3, bias_K, cfg) -> (h_pre_TxN, h_post_TxN, h_res_TxNxN)
  hc_maps(x_TxNxC, w_CxK, a_pre_N, b_post_N, a_res_NxN, s_alpha, s_beta, rms_eps) -> the same
  pre(x_TxNxC, h_pre_TxN) -> u_TxC                         (in x's dtype)
  post(x_TxNxC, y_TxC, h_post_TxN, h_res_TxNxN) -> x'_TxNxC  (in x's dtype)

Maps come back in fp32 (fp64 for fp64 streams), paper layout. A backend may also define
``mhc_connection_pre(x, phi, alpha, bias, cfg)`` and ``hc_connection_pre(x, w, a_pre, b_post,
a_res, s_alpha, s_beta, rms_eps)`` returning ``(u_TxC, streams.Context)``: a fused first half
of a connection (the C++ backend computes u in the coefficient kernel's pass and adds the
stream's gradients inside its backward). Without them, ``connection_pre`` runs the maps,
then ``pre``.

Adding a backend: write ``backends/<name>.py`` with the above, add the name to
``dispatch.IMPLEMENTATIONS``, and subclass the op mixins in ``tests/ops/test_kernels.py``.
"""

from __future__ import annotations

import jax.numpy as jnp


def fp32_kernel_limits(name: str, op: str, x, cfg, max_streams: int | None = None) -> str | None:
  """The limits the fused kernels share: fp32 math, N <= max_streams, the exact Sinkhorn gradient."""
  if x.dtype == jnp.float64:
    return f"implementation={name!r} computes in fp32; got a float64 x (use 'xla')"
  n = x.shape[-2]
  if max_streams is not None and not 1 <= n <= max_streams:
    return (f"implementation={name!r} takes 1 <= N <= {max_streams} streams; got x of shape "
            f"{tuple(x.shape)} (use 'xla' or 'auto')")
  if op == "mhc_maps" and cfg is not None and cfg.sinkhorn_grad != "exact":
    return (f"implementation={name!r} computes the exact Sinkhorn gradient on-chip; "
            f"sinkhorn_grad={cfg.sinkhorn_grad!r} needs implementation='xla'")
  return None
