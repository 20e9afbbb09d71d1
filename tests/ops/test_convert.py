"""DeepSeek layout conversion: round trips, and a sublayer run with converted parameters equals
a straightforward implementation of DeepSeek's own convention (comb consumed transposed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc_jax import ops


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _deepseek_sublayer(x, hc_fn, hc_scale, hc_base, branch, iters=20, eps=1e-6):
  """One mHC sublayer the way DeepSeek's code computes it, in its own layout (numpy, float64).

  comb[t, j, k] is read from row 2n + j*n + k of hc_fn and used as x'_k = sum_j comb[j, k] x_j,
  so its Sinkhorn starts with a softmax over k (dim -1) and ends with a normalization over j.
  """
  t, n, c = x.shape
  v = x.reshape(t, n * c)
  mixes = (v @ hc_fn.T) / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + 1e-6)
  pre = _sigmoid(mixes[:, :n] * hc_scale[0] + hc_base[:n]) + eps
  post = 2.0 * _sigmoid(mixes[:, n:2 * n] * hc_scale[1] + hc_base[n:2 * n])
  comb = (mixes[:, 2 * n:] * hc_scale[2] + hc_base[2 * n:]).reshape(t, n, n)
  comb = np.exp(comb - comb.max(-1, keepdims=True))
  comb = comb / comb.sum(-1, keepdims=True) + eps
  comb = comb / (comb.sum(-2, keepdims=True) + eps)
  for _ in range(iters - 1):
    comb = comb / (comb.sum(-1, keepdims=True) + eps)
    comb = comb / (comb.sum(-2, keepdims=True) + eps)
  u = np.einsum("tj,tjc->tc", pre, x)
  y = branch(u)
  return np.einsum("tjk,tjc->tkc", comb, x) + post[:, :, None] * y[:, None, :]


def _deepseek_params(n, c, seed=0):
  rng = np.random.default_rng(seed)
  k = n * n + 2 * n
  return (rng.normal(size=(k, n * c)) / np.sqrt(n * c), np.array([0.7, 1.3, 2.1]), 0.5 * rng.normal(size=k))


@pytest.mark.parametrize("n", [1, 2, 4])
def test_round_trips(n):
  hc_fn, hc_scale, hc_base = _deepseek_params(n, 6)
  phi, alpha, bias = ops.from_deepseek(hc_fn, hc_scale, hc_base)
  assert phi.shape == (n * 6, n * n + 2 * n)
  for a, b in zip(ops.to_deepseek(phi, alpha, bias), (hc_fn, hc_scale, hc_base)):
    np.testing.assert_array_equal(a, b.astype(np.float32))
  again = ops.from_deepseek(*ops.to_deepseek(phi, alpha, bias))
  for a, b in zip(again, (phi, alpha, bias)):
    np.testing.assert_array_equal(a, b)


def test_converted_parameters_reproduce_deepseek(x64):
  n, c, t = 4, 8, 16
  hc_fn, hc_scale, hc_base = _deepseek_params(n, c, seed=1)
  w_branch = np.random.default_rng(2).normal(size=(c, c)) / np.sqrt(c)
  branch = lambda u: np.tanh(u @ w_branch)
  x = np.random.default_rng(3).normal(size=(t, n, c))
  want = _deepseek_sublayer(x, hc_fn, hc_scale, hc_base, branch)

  phi, alpha, bias = ops.from_deepseek(hc_fn, hc_scale, hc_base)
  h_pre, h_post, h_res = ops.mhc_coefficients(jnp.asarray(x), phi, alpha, bias)
  u = ops.mhc_pre(jnp.asarray(x), h_pre)
  got = ops.mhc_post(jnp.asarray(x), jnp.tanh(u @ w_branch), h_post, h_res)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

  # The classic mistake, the res block loaded untransposed, is a large error, not a rounding one.
  wrong_phi = jnp.asarray(hc_fn).T
  _, _, h_res_wrong = ops.mhc_coefficients(jnp.asarray(x), wrong_phi, alpha, bias)
  assert float(jnp.max(jnp.abs(h_res_wrong - h_res))) > 0.1


def test_bad_layouts():
  with pytest.raises(ValueError, match="23 coefficients is not N\\*N \\+ 2N"):
    ops.from_deepseek(np.zeros((23, 8)), np.zeros(3), np.zeros(23))
  with pytest.raises(ValueError, match=r"hc_base has shape \(7,\), expected \(24,\)"):
    ops.from_deepseek(np.zeros((24, 8)), np.zeros(3), np.zeros(7))
  with pytest.raises(ValueError, match=r"alpha has shape \(2,\)"):
    ops.to_deepseek(np.zeros((8, 24)), np.zeros(2), np.zeros(24))
