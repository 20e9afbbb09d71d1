"""HC coefficient functions: static init, the A_r^T convention, dynamic == per-stream reference (values and VJP)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc_jax import ops
from mhc_jax.ops.reference import hc_coefficients_reference


@pytest.mark.parametrize("layer_index, n", [(0, 4), (5, 4), (3, 2)])
def test_static_init_is_residual_shaped(layer_index, n):
  a_pre, b_post, a_res = ops.hc_static_init(n, layer_index)
  np.testing.assert_array_equal(a_pre, np.eye(n)[layer_index % n])
  np.testing.assert_array_equal(b_post, np.ones(n))
  np.testing.assert_array_equal(a_res, np.eye(n))


def test_static_hc_uses_a_res_transposed():
  x = jnp.ones((2, 3, 8))
  a_res = jnp.arange(9.0).reshape(3, 3)
  h_pre, h_post, h_res = ops.hc_coefficients(x, jnp.zeros(3), jnp.ones(3), a_res)
  assert h_pre.shape == (2, 3) and h_res.shape == (2, 3, 3)
  np.testing.assert_array_equal(h_res[0], a_res.T)


def test_dynamic_matches_per_stream_reference():
  k = jax.random.split(jax.random.PRNGKey(0), 5)
  n, c = 4, 16
  x = jax.random.normal(k[0], (2, 5, n, c))
  w = jax.random.normal(k[1], (c, n + 2)) / 4
  a_pre, b_post, a_res = ops.hc_static_init(n, 1)
  a_res = a_res + 0.1 * jax.random.normal(k[2], (n, n))
  got = ops.hc_coefficients(x, a_pre, b_post, a_res, w, 0.3, 0.7)
  want = hc_coefficients_reference(x, w, 0.3, 0.7, a_pre, b_post, a_res)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_dynamic_vjp_equals_autodiff_of_reference(x64):
  """The custom VJP of the RMS projection against autodiff of the plain per-stream equations."""
  k = jax.random.split(jax.random.PRNGKey(1), 6)
  n, c = 3, 5
  x = 2.0 * jax.random.normal(k[0], (2, 4, n, c), jnp.float64)
  w = jax.random.normal(k[1], (c, n + 2), jnp.float64) / 2
  a_pre, b_post, a_res = (a.astype(jnp.float64) for a in ops.hc_static_init(n, 1))
  cot = [jax.random.normal(kk, s, jnp.float64) for kk, s in zip(k[2:], [(2, 4, n), (2, 4, n), (2, 4, n, n)])]

  def loss(fn, x, w, s_alpha, s_beta):
    outs = fn(x, w, s_alpha, s_beta)
    return sum(jnp.sum(o * ci) for o, ci in zip(outs, cot))

  ours = lambda x, w, sa, sb: ops.hc_coefficients(x, a_pre, b_post, a_res, w, sa, sb)
  ref = lambda x, w, sa, sb: hc_coefficients_reference(x, w, sa, sb, a_pre, b_post, a_res)
  args = (x, w, jnp.float64(0.3), jnp.float64(0.7))
  got = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2, 3))(*args)
  want = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2, 3))(*args)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


def test_dynamic_res_row_j_comes_from_stream_j():
  """Only stream 0 varies, so only column 0 of H_res (= row 0 of the HC-paper matrix) moves."""
  n, c = 3, 8
  w = jnp.zeros((c, n + 2)).at[:, 2:].set(1.0)
  a_pre, b_post, a_res = ops.hc_static_init(n, 0)
  base = jnp.ones((n, c))
  moved = base.at[0].set(-1.0)
  h0 = ops.hc_coefficients(base, a_pre, b_post, a_res, w, 0.5, 0.5)[2]
  h1 = ops.hc_coefficients(moved, a_pre, b_post, a_res, w, 0.5, 0.5)[2]
  changed = np.abs(np.asarray(h1 - h0)) > 1e-6
  np.testing.assert_array_equal(changed, np.eye(n, dtype=bool)[[0] * n])  # every row, column 0


def test_bad_shapes():
  x = jnp.ones((2, 3, 8))
  a_pre, b_post, a_res = ops.hc_static_init(3, 0)
  with pytest.raises(ValueError, match=r"w has shape \(8, 4\), expected \(8, 5\)"):
    ops.hc_coefficients(x, a_pre, b_post, a_res, jnp.zeros((8, 4)))
  with pytest.raises(ValueError, match=r"a_res has shape \(4, 4\)"):
    ops.hc_coefficients(x, a_pre, b_post, jnp.eye(4))
