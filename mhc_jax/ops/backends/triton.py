"""The ``"triton"`` backend: jax-triton kernels (:mod:`mhc_jax.ops.triton_kernels`), GPUs only.

Optional: ``pip install 'mhc_jax[triton]'`` brings jax-triton and Triton. The mHC maps are
XLA's projection and gates around the Triton Sinkhorn (forward, and the exact backward
replayed on-chip); the post/res merge is one Triton kernel each way. There is no pre-apply
or HC kernel: ask for those with ``"xla"`` or ``"pallas"``.
"""

from __future__ import annotations

import jax

from mhc_jax.ops import triton_kernels as kernels
from mhc_jax.ops.backends import fp32_kernel_limits, xla
from mhc_jax.ops.streams import MHCConfig

NAME = "triton"
OPS = frozenset({"mhc_maps", "post"})


def unavailable(*, allow_build: bool) -> str | None:
  del allow_build
  if jax.default_backend() != "gpu":
    return (f"implementation='triton' runs on GPUs only (jax-triton has no CPU mode); the backend is "
            f"{jax.default_backend()!r}: use 'pallas' (interpret mode) or 'xla'")
  try:
    kernels.modules()
  except ImportError as e:
    return str(e)
  return None


def unsupported(op: str, x, cfg: MHCConfig | None) -> str | None:
  return fp32_kernel_limits(NAME, op, x, cfg)


def mhc_maps(x_TxNxC, phi_PxK, alpha_3, bias_K, cfg: MHCConfig):
  sinkhorn = lambda logits: kernels.sinkhorn(logits, cfg.num_iters, cfg.sinkhorn_eps)
  return xla.mhc_maps(x_TxNxC, phi_PxK, alpha_3, bias_K, cfg, sinkhorn=sinkhorn)


post = kernels.post
