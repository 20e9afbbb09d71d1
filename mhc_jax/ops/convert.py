"""DeepSeek's released mHC parameter layout <-> ours (SPEC section 8).

DeepSeek stores ``hc_fn [K, N*C]`` (rows [pre | post | comb], columns over the stream-major
flattening i*C + c), ``hc_scale [3]`` and ``hc_base [K]``. Its combine matrix is consumed
transposed, ``x'_k = sum_j comb[j, k] x_j + post_k y``, with comb[j, k] in row 2N + j*N + k.
Ours is paper layout, ``H_res[k, j] = comb[j, k]``. So the res block is transposed both
ways: loading it untransposed is a silent, large error.
"""

from __future__ import annotations

import numpy as np

import jax.numpy as jnp


def _transpose_res_rows(a, n: int):
  """Swaps (j, k) <-> (k, j) in the res part (rows 2N:) of a [K, ...] array; an involution."""
  head, res = a[: 2 * n], a[2 * n:]
  res = res.reshape((n, n) + res.shape[1:]).swapaxes(0, 1).reshape(res.shape)
  return jnp.concatenate([head, res], axis=0)


def _num_streams(k: int) -> int:
  n = int(round(np.sqrt(k + 1) - 1))  # K = N^2 + 2N = (N + 1)^2 - 1
  if n < 1 or n * n + 2 * n != k:
    raise ValueError(f"{k} coefficients is not N*N + 2N for any integer N >= 1")
  return n


def from_deepseek(hc_fn, hc_scale, hc_base):
  """DeepSeek ``(hc_fn [K, N*C], hc_scale [3], hc_base [K])`` -> ours ``(phi [N*C, K], alpha [3], bias [K])``."""
  hc_fn, hc_scale, hc_base = map(jnp.asarray, (hc_fn, hc_scale, hc_base))
  if hc_fn.ndim != 2:
    raise ValueError(f"hc_fn must be [N*N+2N, N*C], got shape {hc_fn.shape}")
  n = _num_streams(hc_fn.shape[0])
  if hc_base.shape != (hc_fn.shape[0],):
    raise ValueError(f"hc_base has shape {hc_base.shape}, expected ({hc_fn.shape[0]},)")
  if hc_scale.shape != (3,):
    raise ValueError(f"hc_scale has shape {hc_scale.shape}, expected (3,)")
  return _transpose_res_rows(hc_fn, n).T, hc_scale, _transpose_res_rows(hc_base, n)


def to_deepseek(phi, alpha, bias):
  """Ours ``(phi [N*C, K], alpha [3], bias [K])`` -> DeepSeek ``(hc_fn [K, N*C], hc_scale [3], hc_base [K])``."""
  phi, alpha, bias = map(jnp.asarray, (phi, alpha, bias))
  if phi.ndim != 2:
    raise ValueError(f"phi must be [N*C, N*N+2N], got shape {phi.shape}")
  n = _num_streams(phi.shape[1])
  if bias.shape != (phi.shape[1],):
    raise ValueError(f"bias has shape {bias.shape}, expected ({phi.shape[1]},)")
  if alpha.shape != (3,):
    raise ValueError(f"alpha has shape {alpha.shape}, expected (3,)")
  return _transpose_res_rows(phi.T, n), alpha, _transpose_res_rows(bias, n)
