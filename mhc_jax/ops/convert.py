"""DeepSeek's released mHC parameter layout <-> ours (docs/math.md §8).

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


def _checked(w, w_name: str, k_axis: int, scale, scale_name: str, base, base_name: str) -> int:
  """N, after checking a projection ``w`` (K on ``k_axis``), its gates and its bias."""
  if w.ndim != 2:
    layout = "[N*N+2N, N*C]" if k_axis == 0 else "[N*C, N*N+2N]"
    raise ValueError(f"{w_name} must be {layout}, got shape {w.shape}")
  k = w.shape[k_axis]
  n = _num_streams(k)
  if base.shape != (k,):
    raise ValueError(f"{base_name} has shape {base.shape}, expected ({k},)")
  if scale.shape != (3,):
    raise ValueError(f"{scale_name} has shape {scale.shape}, expected (3,)")
  return n


def from_deepseek(hc_fn, hc_scale, hc_base):
  """DeepSeek ``(hc_fn [K, N*C], hc_scale [3], hc_base [K])`` -> ours ``(phi [N*C, K], alpha [3], bias [K])``."""
  hc_fn, hc_scale, hc_base = map(jnp.asarray, (hc_fn, hc_scale, hc_base))
  n = _checked(hc_fn, "hc_fn", 0, hc_scale, "hc_scale", hc_base, "hc_base")
  return _transpose_res_rows(hc_fn, n).T, hc_scale, _transpose_res_rows(hc_base, n)


def to_deepseek(phi, alpha, bias):
  """Ours ``(phi [N*C, K], alpha [3], bias [K])`` -> DeepSeek ``(hc_fn [K, N*C], hc_scale [3], hc_base [K])``."""
  phi, alpha, bias = map(jnp.asarray, (phi, alpha, bias))
  n = _checked(phi, "phi", 1, alpha, "alpha", bias, "bias")
  return _transpose_res_rows(phi.T, n), alpha, _transpose_res_rows(bias, n)
