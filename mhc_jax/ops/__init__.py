"""Pure array functions for mHC, HC and their Sinkhorn (no Flax); the contract is docs/math.md §10.

  sinkhorn_knopp                      Sinkhorn-Knopp onto doubly stochastic matrices
  mhc_coefficients, hc_coefficients   the per-token maps (H_pre, H_post, H_res)
  mhc_lite_coefficients, mhc_lite_connection_pre
                                      mHC-lite: H_res a softmax mixture of the N! permutations
  mhc_pre, mhc_post                   u = H_pre x and x' = H_res x + H_post^T y
  mhc_connection_pre, hc_connection_pre, connection_post
                                      one connection as two calls: ``u, ctx = *_pre(x, ...)``,
                                      then ``x' = connection_post(F(u), ctx)`` (fused on the
                                      backends that can)
  stream_axes                         the mesh axes the ops split tokens over (on a mesh,
                                      kernels run per token shard: ops/sharding.py)

Each op takes ``implementation=``; :mod:`mhc_jax.ops.dispatch` settles ``"auto"`` and imports
the backend modules (:mod:`mhc_jax.ops.backends`) on first use.
"""

from mhc_jax.ops.connection import connection_post, mhc_post, mhc_pre
from mhc_jax.ops.convert import from_deepseek, to_deepseek
from mhc_jax.ops.dispatch import IMPLEMENTATIONS, check_implementation, prepare
from mhc_jax.ops.hc import hc_coefficients, hc_connection_pre, hc_static_init
from mhc_jax.ops.lite import mhc_lite_coefficients, mhc_lite_connection_pre, num_lite_coefficients
from mhc_jax.ops.mhc import mhc_coefficients, mhc_connection_pre
from mhc_jax.ops.sharding import stream_axes
from mhc_jax.ops.sinkhorn import GRAD_MODES, sinkhorn_knopp
from mhc_jax.ops.streams import Context, MHCConfig, num_coefficients

__all__ = [
    "GRAD_MODES",
    "IMPLEMENTATIONS",
    "Context",
    "MHCConfig",
    "check_implementation",
    "connection_post",
    "from_deepseek",
    "hc_coefficients",
    "hc_connection_pre",
    "hc_static_init",
    "mhc_coefficients",
    "mhc_connection_pre",
    "mhc_lite_coefficients",
    "mhc_lite_connection_pre",
    "mhc_post",
    "mhc_pre",
    "num_coefficients",
    "num_lite_coefficients",
    "prepare",
    "sinkhorn_knopp",
    "stream_axes",
    "to_deepseek",
]
