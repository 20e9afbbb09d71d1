"""Connection modules: n = 1 is a residual, HC/mHC at init equal a Pre-Norm residual network,
the default mHC init breaks stream symmetry, maps can be captured, params stay fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mhc_jax import layers

C = 16


class Branch(nnx.Module):
  """A sublayer with its own pre-norm: F(u) = W2 gelu(W1 RMSNorm(u))."""

  def __init__(self, rngs):
    self.norm = nnx.RMSNorm(C, rngs=rngs)
    self.up = nnx.Linear(C, 2 * C, rngs=rngs)
    self.down = nnx.Linear(2 * C, C, rngs=rngs)

  def __call__(self, u):
    return self.down(jax.nn.gelu(self.up(self.norm(u))))


class Stack(nnx.Module):
  """Three sublayers, each wrapped in a connection of one kind."""

  def __init__(self, kind, n, rngs, depth=3, **kwargs):
    self.n = n
    self.layers = nnx.List([
        layers.make_connection(kind, Branch(nnx.Rngs(100 + i)), num_streams=n, features=C,
                               layer_index=i, rngs=rngs, **kwargs)
        for i in range(depth)])

  def hidden(self, x):
    h = layers.expand_streams(x, self.n)
    for layer in self.layers:
      h = layer(h)
    return h

  def __call__(self, x):
    return layers.reduce_streams(self.hidden(x))


def _prenorm_residual(x, depth=3):
  """The Pre-Norm residual network with the same sublayers (Branch(Rngs(100 + i)))."""
  for layer in Stack("residual", 1, nnx.Rngs(0), depth=depth).layers:
    x = layer(x)
  return x


def _x(shape=(2, 5, C), seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


@pytest.mark.parametrize("kind", ["hc", "mhc"])
def test_one_stream_is_a_plain_residual(kind):
  x = _x()
  conn = layers.make_connection(kind, Branch(nnx.Rngs(3)), num_streams=1, features=C, rngs=nnx.Rngs(1))
  res = layers.Residual(Branch(nnx.Rngs(3)))
  np.testing.assert_array_equal(conn(x[..., None, :])[..., 0, :], res(x))
  assert set(nnx.to_pure_dict(nnx.state(conn, nnx.Param))) == {"sublayer"}  # no mixing params


@pytest.mark.parametrize("dynamic", [True, False])
def test_hc_at_init_equals_prenorm_residual(dynamic):
  x = _x()
  net = Stack("hc", 4, nnx.Rngs(1), dynamic=dynamic)
  h = net.hidden(x)
  want = _prenorm_residual(x)
  for i in range(4):  # every stream carries the residual network's state
    np.testing.assert_allclose(h[..., i, :], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("init", ["paper", "identity"])
def test_mhc_with_zero_phi_equals_prenorm_residual(init):
  x = _x()
  net = Stack("mhc", 4, nnx.Rngs(1), init=init)
  for layer in net.layers:
    layer.phi[...] = jnp.zeros_like(layer.phi[...])
  h = net.hidden(x)
  want = _prenorm_residual(x)
  for i in range(4):
    np.testing.assert_allclose(h[..., i, :], want, rtol=1e-5, atol=1e-5)


def test_mhc_default_init_is_close_to_prenorm_residual():
  x = _x()
  h = Stack("mhc", 4, nnx.Rngs(1)).hidden(x)
  want = _prenorm_residual(x)
  err = float(jnp.max(jnp.abs(h - want[..., None, :])))
  assert 1e-5 < err < 0.1  # O(alpha): different, but close


def test_identity_init_maps():
  conn = layers.ManifoldHyperConnection(Branch(nnx.Rngs(0)), num_streams=4, features=C,
                                        layer_index=6, init="identity", rngs=nnx.Rngs(1))
  _, ctx = conn.pre(layers.expand_streams(_x(), 4))
  h_pre, h_post, h_res = ctx.h_pre, ctx.h_post, ctx.h_res
  np.testing.assert_allclose(h_res, jnp.broadcast_to(jnp.eye(4), h_res.shape), atol=0.02)
  np.testing.assert_allclose(h_pre, jnp.broadcast_to(jnp.eye(4)[2], h_pre.shape), atol=0.01)
  np.testing.assert_allclose(h_post, 1.0, atol=0.05)


def _stream_spread(net, x):
  h = net.layers[0](layers.expand_streams(x, 4))
  return float(jnp.max(jnp.abs(h - h[..., :1, :])))


def _one_sgd_step(net, x):
  target = _x(seed=9)
  opt = nnx.Optimizer(net, optax.sgd(0.5), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.mean((m(x) - target) ** 2))(net)
  opt.update(net, grads)


def test_default_init_breaks_stream_symmetry_after_one_step():
  x = _x()
  symmetric = Stack("mhc", 4, nnx.Rngs(1))
  for layer in symmetric.layers:
    layer.phi[...] = jnp.zeros_like(layer.phi[...])
  default = Stack("mhc", 4, nnx.Rngs(1))
  _one_sgd_step(symmetric, x)
  _one_sgd_step(default, x)
  assert _stream_spread(symmetric, x) < 1e-6  # phi = 0: the streams stay copies forever
  assert _stream_spread(default, x) > 1e-3  # the random phi makes them distinct


def test_capture_maps_off_by_default_then_on():
  net = Stack("mhc", 4, nnx.Rngs(1))
  x = _x()
  net(x)
  assert not jax.tree.leaves(nnx.state(net, nnx.Intermediate))
  net.set_attributes(capture_maps=True)
  net(x)
  maps = nnx.pop(net, nnx.Intermediate)
  first = maps["layers"][0]
  assert first["h_res"][...].shape == (2, 5, 4, 4)
  assert first["h_pre"][...].shape == (2, 5, 4)
  np.testing.assert_allclose(first["h_res"][...].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["hc", "mhc"])
def test_bf16_stream_with_fp32_params(kind):
  net = Stack(kind, 4, nnx.Rngs(1))
  h = net.hidden(_x(dtype=jnp.bfloat16))
  assert h.dtype == jnp.bfloat16
  for p in jax.tree.leaves(nnx.state(net, nnx.Param)):
    assert p.dtype == jnp.float32


def test_stream_head_starts_near_the_sum():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, C))
  head = layers.StreamHead(4, C, rngs=nnx.Rngs(0))
  w = head.weights(x)
  np.testing.assert_allclose(w, 0.5, atol=0.02)
  np.testing.assert_allclose(head(x), jnp.sum(w[..., None] * x, axis=-2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_streams=0), "num_streams=0"),
    (dict(init="orthogonal"), "init='orthogonal'"),
    (dict(num_iters=0), "num_iters=0"),
    (dict(sinkhorn_grad="foo"), "sinkhorn_grad='foo'"),
    (dict(implementation="cuda"), "implementation='cuda'"),
])
def test_bad_constructor_arguments(kwargs, match):
  args = dict(num_streams=4, features=C, rngs=nnx.Rngs(0)) | kwargs
  with pytest.raises(ValueError, match=match):
    layers.ManifoldHyperConnection(Branch(nnx.Rngs(0)), **args)


def test_bad_connection_and_shape():
  with pytest.raises(ValueError, match="connection='dense'"):
    layers.make_connection("dense", Branch(nnx.Rngs(0)), num_streams=4, features=C, rngs=nnx.Rngs(0))
  conn = layers.ManifoldHyperConnection(Branch(nnx.Rngs(0)), num_streams=4, features=C, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\[\.\.\., 4, 16\].*got \(2, 3, 16\)"):
    conn(jnp.zeros((2, 3, C)))
