"""mhc_jax: Manifold-Constrained Hyper-Connections (mHC) in JAX and Flax NNX.

Subpackages (imports point one way): ``ops`` (pure array functions) -> ``layers``
(Flax NNX connection modules) -> ``models`` (a decoder-only LM).

Shape letters used in names across the package (nanodo style, e.g. ``x_TxNxC``):
  B batch, L sequence length, T tokens (B*L flattened or any leading shape),
  N streams (the expansion rate n), C model width, K = N*N + 2*N coefficient
  columns of an mHC projection, H heads, D head width, F MLP hidden width,
  V vocabulary size. ``...`` stands for any leading batch shape.
"""

__version__ = "0.1.0"
