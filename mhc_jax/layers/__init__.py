"""Flax NNX modules: residual, HC and mHC connections around any sublayer, plus stream boundaries."""

from mhc_jax.layers.connections import (
    BRANCH_OUTPUT,
    CONNECTIONS,
    FIXABLE_MAPS,
    MHC_INITS,
    RES_PROJECTIONS,
    HCStatic,
    HyperConnection,
    ManifoldHyperConnection,
    Residual,
    check_fixed_maps,
    make_connection,
)
from mhc_jax.layers.streams import StreamHead, expand_streams, reduce_streams

__all__ = [
    "BRANCH_OUTPUT",
    "CONNECTIONS",
    "FIXABLE_MAPS",
    "MHC_INITS",
    "RES_PROJECTIONS",
    "HCStatic",
    "HyperConnection",
    "ManifoldHyperConnection",
    "Residual",
    "StreamHead",
    "check_fixed_maps",
    "expand_streams",
    "make_connection",
    "reduce_streams",
]
