"""Pallas GPU kernels (Triton lowering) for the mHC ops; interpret mode off-GPU.

The ``"pallas"`` backend (:mod:`mhc_jax.ops.backends.pallas`) calls them.
"""

from mhc_jax.ops.pallas.coefficients import coefficients, padded_width
from mhc_jax.ops.pallas.stream import post_bwd, post_fwd, pre_bwd, pre_fwd

__all__ = ["coefficients", "padded_width", "post_bwd", "post_fwd", "pre_bwd", "pre_fwd"]
