"""Pure array functions for mHC, HC and their Sinkhorn (no Flax). See SPEC section 9."""

from mhc_jax.ops.convert import from_deepseek, to_deepseek
from mhc_jax.ops.hc import hc_coefficients, hc_static_init
from mhc_jax.ops.mhc import (
    IMPLEMENTATIONS,
    mhc_coefficients,
    mhc_post,
    mhc_pre,
    num_coefficients,
    resolve_implementation,
)
from mhc_jax.ops.sinkhorn import GRAD_MODES, sinkhorn_knopp

__all__ = [
    "GRAD_MODES",
    "IMPLEMENTATIONS",
    "from_deepseek",
    "hc_coefficients",
    "hc_static_init",
    "mhc_coefficients",
    "mhc_post",
    "mhc_pre",
    "num_coefficients",
    "resolve_implementation",
    "sinkhorn_knopp",
    "to_deepseek",
]
