"""Sinkhorn-Knopp: doubly stochastic output, DeepSeek's sequence, and three gradient modes."""

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

from mhc_jax.ops import sinkhorn_knopp
from mhc_jax.ops.reference import sinkhorn_reference
from tests.helpers import central_fd_vjp, max_abs, saved_residual_bytes


def _logits(shape, scale=1.0, seed=0, dtype=jnp.float32):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


def _deepseek_numpy(logits, num_iters, eps):
  """DeepSeek's sequence as docs/math.md §3 states it, in numpy float64."""
  m = np.exp(logits - logits.max(axis=-2, keepdims=True))
  m = m / m.sum(axis=-2, keepdims=True) + eps
  m = m / (m.sum(axis=-1, keepdims=True) + eps)
  for _ in range(num_iters - 1):
    m = m / (m.sum(axis=-2, keepdims=True) + eps)
    m = m / (m.sum(axis=-1, keepdims=True) + eps)
  return m


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_rows_exact_columns_within_truncation(n):
  logits = _logits((64, n, n), scale=2.0)
  p = sinkhorn_knopp(logits, eps=0.0)
  assert p.dtype == jnp.float32 and p.shape == (64, n, n)
  assert bool(jnp.all(p >= 0))
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=2e-6)  # rows: exact up to fp32 rounding
  col_err = lambda k: float(jnp.max(jnp.abs(sinkhorn_knopp(logits, k, eps=0.0).sum(-2) - 1)))
  assert col_err(20) <= col_err(5) + 1e-7  # the truncation error shrinks with iterations
  assert col_err(20) < 5e-2
  assert col_err(1000) < 1e-5
  # DeepSeek's eps costs at most ~eps per row.
  np.testing.assert_allclose(sinkhorn_knopp(logits).sum(-1), 1.0, atol=n * 2e-6)


def test_matches_deepseek_sequence_unconverged(x64):
  logits = np.asarray(_logits((5, 4, 4), scale=4.0, dtype=jnp.float64))
  for num_iters in (1, 2, 7, 20):
    for eps in (1e-6, 0.0, 1e-2):
      want = _deepseek_numpy(logits, num_iters, eps)
      np.testing.assert_allclose(sinkhorn_knopp(logits, num_iters, eps), want, rtol=1e-12, atol=1e-14)
      np.testing.assert_allclose(sinkhorn_reference(logits, num_iters, eps), want, rtol=1e-12, atol=1e-14)


def test_converges_to_pot_sinkhorn_float64(x64):
  """The limit equals the entropic OT plan of POT (an independent library) with cost -logits."""
  logits = np.asarray(_logits((3, 5, 5), scale=1.5, seed=3, dtype=jnp.float64))
  ours = sinkhorn_knopp(logits, num_iters=2000, eps=0.0)
  for b in range(logits.shape[0]):
    ones = np.ones(5)
    plan = ot.sinkhorn(ones, ones, -logits[b], reg=1.0, numItermax=100_000, stopThr=1e-15)
    np.testing.assert_allclose(ours[b], plan, atol=1e-10)


@pytest.mark.parametrize("num_iters", [1, 3, 20])
@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_exact_equals_autodiff_equals_finite_differences(x64, num_iters, eps):
  logits = _logits((2, 4, 4), scale=5.0, seed=num_iters, dtype=jnp.float64)
  cot = jax.random.normal(jax.random.PRNGKey(7), logits.shape, jnp.float64)
  vjp = lambda mode: jax.vjp(lambda l: sinkhorn_knopp(l, num_iters, eps, mode), logits)[1](cot)[0]
  exact, autodiff = vjp("exact"), vjp("autodiff")
  fd = central_fd_vjp(lambda l: sinkhorn_knopp(jnp.asarray(l), num_iters, eps, "autodiff"), logits, cot)
  scale = float(jnp.max(jnp.abs(autodiff)))
  assert max_abs(exact, autodiff) < 1e-12 * max(scale, 1.0)
  assert max_abs(autodiff, fd) < 1e-7 * max(scale, 1.0)


def test_exact_fp32_matches_float64(x64):
  """The backward rebuilds iterates by undoing normalizations; check fp32 drift stays small."""
  logits = _logits((256, 4, 4), scale=5.0, seed=1, dtype=jnp.float64)
  cot = jax.random.normal(jax.random.PRNGKey(2), logits.shape, jnp.float64)
  ref = jax.vjp(lambda l: sinkhorn_knopp(l, grad="autodiff"), logits)[1](cot)[0]
  got = jax.vjp(sinkhorn_knopp, logits.astype(jnp.float32))[1](cot.astype(jnp.float32))[0]
  assert max_abs(got, ref) < 1e-5 * float(jnp.max(jnp.abs(ref)))


def test_implicit_matches_when_converged_and_documents_error_otherwise(x64):
  cot = jax.random.normal(jax.random.PRNGKey(5), (8, 4, 4), jnp.float64)
  grad = lambda l, k, mode: jax.vjp(lambda z: sinkhorn_knopp(z, k, 0.0, mode), l)[1](cot)[0]
  small = _logits((8, 4, 4), scale=0.5, dtype=jnp.float64)
  assert max_abs(grad(small, 300, "implicit"), grad(small, 300, "autodiff")) < 1e-9
  # Not converged: the limit's gradient differs from the 20-step map's (documented ~1e-2).
  unit = _logits((8, 4, 4), scale=1.0, dtype=jnp.float64)
  err = max_abs(grad(unit, 20, "implicit"), grad(unit, 20, "autodiff"))
  assert 1e-8 < err < 0.1


def test_exact_saved_residuals_do_not_grow_with_num_iters():
  logits = _logits((128, 4, 4))
  saved = lambda mode, k: saved_residual_bytes(lambda l: sinkhorn_knopp(l, k, grad=mode), logits)
  assert saved("exact", 1) == saved("exact", 20) == logits.size * 4
  assert saved("autodiff", 20) > 10 * saved("autodiff", 1)  # the control: autodiff does grow


def test_batch_shapes_and_low_precision_input():
  logits = _logits((2, 3, 4, 4)).astype(jnp.bfloat16)
  p = sinkhorn_knopp(logits)
  assert p.shape == (2, 3, 4, 4) and p.dtype == jnp.float32
  g = jax.grad(lambda l: jnp.sum(sinkhorn_knopp(l) ** 2))(logits)
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
  one = sinkhorn_knopp(jnp.zeros((3, 1, 1)), eps=0.0)
  np.testing.assert_allclose(one, 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_iters=0), "num_iters=0"),
    (dict(num_iters=2.5), "num_iters=2.5"),
    (dict(grad="backprop"), "grad='backprop'"),
    (dict(eps=-1.0), "eps=-1.0"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match.replace("(", r"\(")):
    sinkhorn_knopp(jnp.zeros((4, 4)), **kwargs)


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"\[\.\.\., N, N\], got \(4, 3\)"):
    sinkhorn_knopp(jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match="floating"):
    sinkhorn_knopp(jnp.zeros((4, 4), jnp.int32))
