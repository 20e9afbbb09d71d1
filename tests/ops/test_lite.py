"""mHC-lite: H_res as a softmax mixture of the N! permutation matrices (docs/math.md §9)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc_jax import analysis, ops
from mhc_jax.layers import ManifoldHyperConnection
from mhc_jax.models import ModelConfig, TransformerLM
from mhc_jax.ops.lite import permutation_matrices
from tests.helpers import central_fd_vjp, max_abs


def _inputs(n=3, c=4, batch=(2, 3), dtype=jnp.float32, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  kk = ops.num_lite_coefficients(n)
  x = jax.random.normal(k[0], batch + (n, c), dtype)
  phi = jax.random.normal(k[1], (n * c, kk), dtype) / np.sqrt(n * c)
  alpha = jnp.array([0.8, 1.1, 1.7], dtype)
  bias = 0.5 * jax.random.normal(k[2], (kk,), dtype)
  return x, phi, alpha, bias


def _numpy_maps(x, phi, alpha, bias, n):
  """The equations of §2 and §9 written out in float64 numpy, one token at a time."""
  x, phi, alpha, bias = (np.asarray(a, np.float64) for a in (x, phi, alpha, bias))
  perms = list(itertools.permutations(range(n)))
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  out = []
  for v in x.reshape(-1, n * x.shape[-1]):
    h = v @ phi / np.sqrt(np.mean(v * v) + 1e-6)
    h = h * np.concatenate([np.full(n, alpha[0]), np.full(n, alpha[1]), np.full(len(perms), alpha[2])])
    h = h + bias
    w = np.exp(h[2 * n:] - h[2 * n:].max())
    w /= w.sum()
    res = np.zeros((n, n))
    for wk, perm in zip(w, perms):
      for i, j in enumerate(perm):
        res[i, j] += wk
    out.append((sig(h[:n]) + 1e-6, 2.0 * sig(h[n:2 * n]), res))
  return [np.stack(m).reshape(x.shape[:-2] + m[0].shape) for m in zip(*out)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_permutation_matrices_are_all_distinct_permutations_identity_first(n):
  p = permutation_matrices(n)
  assert p.shape == (math.factorial(n), n, n)
  np.testing.assert_array_equal(p[0], np.eye(n))
  np.testing.assert_array_equal(p.sum(1), 1.0)
  np.testing.assert_array_equal(p.sum(2), 1.0)
  assert len({m.tobytes() for m in p}) == len(p)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_maps_equal_the_equations_written_out(n):
  x, phi, alpha, bias = _inputs(n=n)
  got = jax.jit(ops.mhc_lite_coefficients)(x, phi, alpha, bias)
  for g, w in zip(got, _numpy_maps(x, phi, alpha, bias, n)):
    assert g.dtype == jnp.float32 and g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_h_res_is_exactly_doubly_stochastic_even_for_extreme_logits():
  x, phi, alpha, bias = _inputs(n=4, batch=(64,))
  bias = bias.at[8:].set(jnp.linspace(-300.0, 300.0, 24))  # a near-one-hot softmax
  for b in (bias, 0.5 * bias / 300.0):
    h_pre, h_post, h_res = jax.jit(ops.mhc_lite_coefficients)(x, phi, jnp.array([1.0, 1.0, 40.0]), b)
    assert bool(jnp.all(h_res >= 0)) and bool(jnp.all(jnp.isfinite(h_res)))
    np.testing.assert_allclose(h_res.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(h_res.sum(-2), 1.0, atol=1e-6)
    assert bool(jnp.all(h_pre > 0)) and bool(jnp.all((h_post >= 0) & (h_post <= 2)))


def test_gradient_equals_finite_differences(x64):
  n = 3
  x, phi, alpha, bias = _inputs(n=n, c=3, batch=(2,), dtype=jnp.float64)
  k = jax.random.split(jax.random.PRNGKey(5), 3)
  w = [jax.random.normal(kk, s, jnp.float64) for kk, s in zip(k, [(n,), (n,), (n, n)])]
  args = (x, phi, alpha, bias)

  def loss(*a):
    return sum(jnp.sum(o * wi) for o, wi in zip(ops.mhc_lite_coefficients(*a), w))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
  for i in range(4):
    f = lambda a, i=i: loss(*[jnp.asarray(a) if j == i else args[j] for j in range(4)])
    fd = central_fd_vjp(f, args[i], np.ones(()))
    assert max_abs(grads[i], fd) < 1e-7, i


@pytest.mark.parametrize("implementation", ["xla", "cpu"])
def test_connection_equals_pre_and_post_of_its_maps(implementation):
  x, phi, alpha, bias = _inputs(n=4, c=8)
  y = jax.random.normal(jax.random.PRNGKey(3), x.shape[:-2] + (8,))

  def step(x, phi):
    u, ctx = ops.mhc_lite_connection_pre(x, phi, alpha, bias, implementation=implementation)
    return u, ops.connection_post(y * u, ctx)

  def want(x, phi):
    h_pre, h_post, h_res = ops.mhc_lite_coefficients(x, phi, alpha, bias)
    u = jnp.einsum("...n,...nc->...c", h_pre, x)
    return u, jnp.einsum("...ij,...jc->...ic", h_res, x) + h_post[..., None] * (y * u)[..., None, :]

  for g, r in zip(jax.jit(step)(x, phi), jax.jit(want)(x, phi)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a)[1])), (0, 1)))
  for g, r in zip(grad(step)(x, phi), grad(want)(x, phi)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_more_than_five_streams_is_refused_by_name():
  x, phi, alpha, bias = _inputs(n=3)
  with pytest.raises(ValueError, match=r"N \(x's stream axis\)=6: .*720 permutation"):
    ops.mhc_lite_coefficients(jnp.zeros((2, 6, 4)), phi, alpha, bias)
  with pytest.raises(ValueError, match=r"phi has shape \(12, 9\), expected \(12, 12\)"):
    ops.mhc_lite_coefficients(x, phi[:, :9], alpha, bias)
  with pytest.raises(ValueError, match="num_streams=6"):
    ManifoldHyperConnection(lambda u: u, num_streams=6, features=4, res_projection="permutations",
                            rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"ModelConfig.num_streams.*=6"):
    ModelConfig(num_streams=6, mhc_res_projection="permutations")
  with pytest.raises(ValueError, match="mhc_res_projection='birkhoff'"):
    ModelConfig(mhc_res_projection="birkhoff")


def test_identity_init_reads_one_stream_and_keeps_streams_apart():
  n, c = 4, 8
  conn = ManifoldHyperConnection(lambda u: jnp.zeros_like(u), num_streams=n, features=c, init="identity",
                                 identity_logit=30.0, res_projection="permutations", rngs=nnx.Rngs(0))
  assert conn.phi.shape == (n * c, 2 * n + 24)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, n, c))
  # F = 0, so x' = H_res x, and H_res is the identity up to e^-30.
  np.testing.assert_allclose(nnx.jit(lambda conn, x: conn(x))(conn, x), x, atol=1e-5)


def test_lm_with_permutation_projection_has_finite_gradients_and_doubly_stochastic_maps():
  cfg = ModelConfig(vocab_size=32, num_layers=1, d_model=16, num_heads=2, num_streams=3,
                    mhc_res_projection="permutations")
  model = TransformerLM(cfg, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 32)

  def loss(model):
    logits = model(tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  grads = nnx.jit(nnx.grad(loss))(model)
  assert grads.blocks.attn.phi.shape == (1, 3 * 16, 2 * 3 + 6)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(nnx.state(grads)))
  assert float(jnp.abs(grads.blocks.attn.phi[...]).max()) > 0
  h_res = analysis.capture(model, tokens)["h_res"]
  assert h_res.shape == (2, 2, 8, 3, 3)
  np.testing.assert_allclose(h_res.sum(-2), 1.0, atol=1e-6)
  np.testing.assert_allclose(h_res.sum(-1), 1.0, atol=1e-6)
