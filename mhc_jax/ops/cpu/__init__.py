"""Fused C++ kernels for XLA:CPU, behind ``implementation="cpu"`` (:mod:`mhc_jax.ops.backends.cpu`).

Why: on a CPU, XLA runs each mHC op as several passes over the ``[T, N, C]`` stream (a skinny
GEMM, a separate sum of squares, batched 4x4 dots for dH_res, dozens of tiny Sinkhorn loop
fusions), and the train step paid ~25% over a residual model. The kernels in ``csrc/`` make one
pass per op, split over XLA's own intra-op thread pool:

  simd.h          the 16-float vector type, exp/sigmoid, loops over C, the thread-pool split
  sinkhorn.h      the Sinkhorn sequence and its VJP on 16 tokens at a time (one per lane)
  coefficients.h  mHC's projection, gates and Sinkhorn, forward and backward
  hc.h            HC's maps (per-stream RMS projection, tanh, static parts), forward and backward
  stream.h        the pre-apply and the post/res merge, forward and backward
  ffi.cc          the XLA FFI bindings (the only translation unit)

The coefficient backward keeps a block's Sinkhorn iterates and sums the phi gradient in fixed
token ranges that XLA adds up, so every result is the same whatever the thread count.
:mod:`mhc_jax.ops.cpu.build` compiles, caches, loads and checks the library
(``python -m mhc_jax.ops.cpu build``). Importing this package compiles nothing.
"""
