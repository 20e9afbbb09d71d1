"""mHC ops: the fused coefficients equal the plain equations; custom VJPs equal autodiff and FD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc_jax import ops
from mhc_jax.ops import reference
from tests.helpers import central_fd_vjp, max_abs, saved_residual_bytes


def _inputs(n=4, c=8, batch=(2, 3), dtype=jnp.float32, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  kk = ops.num_coefficients(n)
  x = jax.random.normal(k[0], batch + (n, c), dtype)
  phi = jax.random.normal(k[1], (n * c, kk), dtype) / np.sqrt(n * c)
  alpha = jnp.array([0.8, 1.1, 1.7], dtype)
  bias = 0.3 * jax.random.normal(k[2], (kk,), dtype)
  return x, phi, alpha, bias


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_fused_coefficients_equal_plain_equations(n):
  x, phi, alpha, bias = _inputs(n=n, c=24)
  for got, want in zip(ops.mhc_coefficients(x, phi, alpha, bias),
                       reference.mhc_coefficients_reference(x, phi, alpha, bias)):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_coefficient_properties():
  x, phi, alpha, bias = _inputs()
  h_pre, h_post, h_res = ops.mhc_coefficients(x, phi, alpha, bias)
  assert bool(jnp.all(h_pre > 0)) and bool(jnp.all(h_post >= 0)) and bool(jnp.all(h_post <= 2))
  np.testing.assert_allclose(h_res.sum(-1), 1.0, atol=1e-5)


def _loss_weights(n, seed=11):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  return [jax.random.normal(kk, s, jnp.float64) for kk, s in zip(k, [(n,), (n,), (n, n)])]


def test_coefficients_vjp_equals_autodiff_of_reference_and_fd(x64):
  x, phi, alpha, bias = _inputs(n=3, c=4, batch=(2,), dtype=jnp.float64)
  w = _loss_weights(3)

  def loss(fn, x, phi, alpha, bias):
    outs = fn(x, phi, alpha, bias, num_iters=5)
    return sum(jnp.sum(o * wi) for o, wi in zip(outs, w))

  args = (x, phi, alpha, bias)
  got = jax.grad(lambda *a: loss(ops.mhc_coefficients, *a), argnums=(0, 1, 2, 3))(*args)
  want = jax.grad(lambda *a: loss(reference.mhc_coefficients_reference, *a), argnums=(0, 1, 2, 3))(*args)
  for g, r in zip(got, want):
    assert g.dtype == r.dtype
    assert max_abs(g, r) < 1e-12
  for i in range(4):  # finite differences, one argument at a time
    def f(a, i=i):
      return loss(ops.mhc_coefficients, *[jnp.asarray(a) if j == i else args[j] for j in range(4)])
    fd = central_fd_vjp(f, args[i], np.ones(()))
    assert max_abs(got[i], fd) < 1e-7


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
def test_pre_post_vjp_equals_autodiff_of_reference(x64, dtype):
  n, c = 4, 5
  k = jax.random.split(jax.random.PRNGKey(1), 6)
  x = jax.random.normal(k[0], (3, n, c), jnp.float64).astype(dtype)
  y = jax.random.normal(k[1], (3, c), jnp.float64).astype(dtype)
  h_pre = jax.random.uniform(k[2], (3, n), jnp.float64)
  h_post = 2 * jax.random.uniform(k[3], (3, n), jnp.float64)
  h_res = ops.sinkhorn_knopp(jax.random.normal(k[4], (3, n, n), jnp.float64))
  tol = 1e-12 if dtype == jnp.float64 else 2e-2

  u, pre_vjp = jax.vjp(ops.mhc_pre, x, h_pre)
  u_ref, pre_ref_vjp = jax.vjp(
      lambda x, h: reference.mhc_pre_reference(x.astype(jnp.float64), h), x, h_pre)
  assert u.dtype == dtype
  assert max_abs(u.astype(jnp.float64), u_ref) < tol * 4
  gu = jax.random.normal(k[5], u.shape, jnp.float64)
  for g, r in zip(pre_vjp(gu.astype(dtype)), pre_ref_vjp(gu)):
    assert max_abs(g.astype(jnp.float64), r) < tol * 8

  out, post_vjp = jax.vjp(ops.mhc_post, x, y, h_post, h_res)
  out_ref, post_ref_vjp = jax.vjp(
      lambda x, y, hp, hr: reference.mhc_post_reference(x.astype(jnp.float64), y.astype(jnp.float64), hp, hr),
      x, y, h_post, h_res)
  assert out.dtype == dtype
  assert max_abs(out.astype(jnp.float64), out_ref) < tol * 8
  go = jax.random.normal(k[5], out.shape, jnp.float64)
  for g, r in zip(post_vjp(go.astype(dtype)), post_ref_vjp(go)):
    assert g.dtype == r.dtype or dtype == jnp.bfloat16
    assert max_abs(g.astype(jnp.float64), r) < tol * 8


def test_pre_post_finite_differences(x64):
  n, c = 3, 4
  k = jax.random.split(jax.random.PRNGKey(2), 4)
  x = jax.random.normal(k[0], (2, n, c), jnp.float64)
  y = jax.random.normal(k[1], (2, c), jnp.float64)
  h = jax.random.uniform(k[2], (2, n), jnp.float64)
  h_res = jax.random.uniform(k[3], (2, n, n), jnp.float64)
  cot = jax.random.normal(k[3], (2, n, c), jnp.float64)
  _, vjp = jax.vjp(ops.mhc_post, x, y, h, h_res)
  grads = vjp(cot)
  args = [x, y, h, h_res]
  for i in range(4):
    f = lambda a, i=i: ops.mhc_post(*[jnp.asarray(a) if j == i else args[j] for j in range(4)])
    assert max_abs(grads[i], central_fd_vjp(f, args[i], cot)) < 1e-8
  _, vjp = jax.vjp(ops.mhc_pre, x, h)
  cot_u = cot[:, 0]
  g_x, g_h = vjp(cot_u)
  assert max_abs(g_x, central_fd_vjp(lambda a: ops.mhc_pre(jnp.asarray(a), h), x, cot_u)) < 1e-8
  assert max_abs(g_h, central_fd_vjp(lambda a: ops.mhc_pre(x, jnp.asarray(a)), h, cot_u)) < 1e-8


def test_bf16_stream_is_saved_without_upcast():
  x, phi, alpha, bias = _inputs(c=64, batch=(32,))
  xb = x.astype(jnp.bfloat16)
  h_pre, h_post, h_res = ops.mhc_coefficients(xb, phi, alpha, bias)
  y = xb[..., 0, :]
  # Each op keeps its stream input in bf16: no fp32 copy of the N*C state is saved.
  assert saved_residual_bytes(lambda x: ops.mhc_pre(x, h_pre), xb) <= xb.size * 2 + h_pre.size * 4
  assert saved_residual_bytes(lambda x: ops.mhc_post(x, y, h_post, h_res), xb) <= (
      xb.size * 2 + y.size * 2 + h_post.size * 4 + h_res.size * 4)
  stream_bytes_fp32 = xb.size * 4
  assert saved_residual_bytes(lambda x: ops.mhc_coefficients(x, phi, alpha, bias), xb) < (
      stream_bytes_fp32 + phi.size * 4 + 64 * 32 * 4)
  grads = jax.grad(lambda x: sum(jnp.sum(o) for o in ops.mhc_coefficients(x, phi, alpha, bias)))(xb)
  assert grads.dtype == jnp.bfloat16


@pytest.mark.parametrize("bad, match", [
    (dict(phi=jnp.zeros((31, 24))), r"phi has shape \(31, 24\), expected \(32, 24\)"),
    (dict(alpha=jnp.zeros((2,))), r"alpha has shape \(2,\), expected \(3,\)"),
    (dict(bias=jnp.zeros((23,))), r"bias has shape \(23,\), expected \(24,\)"),
    (dict(implementation="cuda"), "implementation='cuda'"),
    (dict(sinkhorn_grad="nope"), "grad='nope'"),
    (dict(num_iters=0), "num_iters=0"),
])
def test_coefficients_bad_arguments(bad, match):
  x, phi, alpha, bias = _inputs()
  args = dict(phi=phi, alpha=alpha, bias=bias)
  kwargs = {k: v for k, v in bad.items() if k not in args}
  args.update({k: v for k, v in bad.items() if k in args})
  with pytest.raises(ValueError, match=match):
    ops.mhc_coefficients(x, args["phi"], args["alpha"], args["bias"], **kwargs)


def test_pre_post_bad_arguments():
  x = jnp.zeros((2, 4, 8))
  with pytest.raises(ValueError, match=r"h_pre has shape \(2, 3\), expected \(2, 4\)"):
    ops.mhc_pre(x, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"h_res has shape \(2, 4, 3\)"):
    ops.mhc_post(x, jnp.zeros((2, 8)), jnp.zeros((2, 4)), jnp.zeros((2, 4, 3)))
  with pytest.raises(ValueError, match=r"y has shape \(2, 7\)"):
    ops.mhc_post(x, jnp.zeros((2, 7)), jnp.zeros((2, 4)), jnp.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match="implementation='triton'"):
    ops.mhc_pre(x, jnp.zeros((2, 4)), implementation="triton")
