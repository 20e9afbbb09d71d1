"""The ``"pallas"`` backend: the Pallas kernels of :mod:`mhc_jax.ops.pallas`.

Triton lowering on GPUs; interpret mode on any other backend (the same numbers, slowly), so
it runs everywhere. The coefficient kernel does the GEMM, the RMS, the gates and the
Sinkhorn in one pass (its backward replays the Sinkhorn on-chip, the exact gradient only);
pre and post are one kernel each way. fp32 math for fp32/bf16/fp16 streams. No HC kernel.
"""

from __future__ import annotations

import jax.numpy as jnp

from mhc_jax.ops import pallas as kernels
from mhc_jax.ops.backends import fp32_kernel_limits
from mhc_jax.ops.streams import MHCConfig, column_scales, num_coefficients, saving_inputs

NAME = "pallas"
OPS = frozenset({"mhc_maps", "pre", "post"})


def unavailable(*, allow_build: bool) -> str | None:
  del allow_build
  return None


def unsupported(op: str, x, cfg: MHCConfig | None) -> str | None:
  return fp32_kernel_limits(NAME, op, x, cfg)


def mhc_maps(x_TxNxC, phi_PxK, alpha_3, bias_K, cfg: MHCConfig):
  """The fused coefficient kernel on ``[T, N*C]`` tokens; K padded to a power of two."""
  t, n, c = x_TxNxC.shape
  pad = kernels.padded_width(n) - num_coefficients(n)
  f32 = lambda a: a.astype(jnp.float32)
  h_pre, h_post, h_res = kernels.coefficients(
      x_TxNxC.reshape(t, n * c),
      jnp.pad(f32(phi_PxK), ((0, 0), (0, pad))),
      jnp.pad(column_scales(f32(alpha_3), n), (0, pad)),
      jnp.pad(f32(bias_K), (0, pad)),
      cfg,
  )
  return h_pre, h_post, h_res.reshape(t, n, n)


pre = saving_inputs(kernels.pre_fwd, kernels.pre_bwd)
post = saving_inputs(kernels.post_fwd, kernels.post_bwd)
