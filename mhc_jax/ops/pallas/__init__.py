"""Pallas GPU kernels (Triton lowering) for the mHC ops; interpret mode off-GPU."""

from mhc_jax.ops.pallas.stream import post_bwd, post_fwd, pre_bwd, pre_fwd

__all__ = ["post_bwd", "post_fwd", "pre_bwd", "pre_fwd"]
