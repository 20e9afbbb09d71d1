"""Kernels per shard: on an 8-device mesh every op equals its single-device self, forward and gradients.

The mesh is data 2 x fsdp 2 x tensor 2 of the suite's fake CPU devices; the inputs are
sharded over tokens. Each implementation that runs on a CPU is checked ("xla" through XLA's
partitioner, "cpu" and "pallas" (interpret mode) under ``shard_map``), and so is a sharded
mHC layer with its parameter gradients, which must come back summed over the shards.
Every op's gradients include those of its replicated parameters (phi, alpha, bias, w).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mhc_jax import layers, ops
from mhc_jax.ops import dispatch, sharding

N, C = 4, 32
BATCH = (4, 4)  # T = 16 tokens: 2 per device
AXES = ("data", "fsdp", "tensor")


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((2, 2, 2), AXES, axis_types=(AxisType.Auto,) * 3)


def _stream_inputs(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 8)
  x = jax.random.normal(k[0], BATCH + (N, C))
  y = jax.random.normal(k[1], BATCH + (C,))
  h_pre = jax.random.uniform(k[2], BATCH + (N,))
  h_post = 2 * jax.random.uniform(k[3], BATCH + (N,))
  h_res = jax.nn.softmax(jax.random.normal(k[4], BATCH + (N, N)), axis=-1)
  phi = jax.random.normal(k[5], (N * C, ops.num_coefficients(N))) / np.sqrt(N * C)
  bias = 0.5 * jax.random.normal(k[6], (ops.num_coefficients(N),))
  w = 0.3 * jax.random.normal(k[7], (C, N + 2))
  return dict(x=x, y=y, h_pre=h_pre, h_post=h_post, h_res=h_res, phi=phi,
              alpha=jnp.array([0.7, 1.1, 1.6]), bias=bias, w=w)


def _mhc_connection(x, phi, alpha, bias, *, implementation):
  u, ctx = ops.mhc_connection_pre(x, phi, alpha, bias, implementation=implementation)
  return u, ops.connection_post(jnp.tanh(u), ctx)


def _hc_connection(x, w, *, implementation):
  a_pre, b_post, a_res = ops.hc_static_init(N, 1)
  u, ctx = ops.hc_connection_pre(x, a_pre, b_post, a_res, w, 0.3, 0.2, implementation=implementation)
  return u, ops.connection_post(jnp.tanh(u), ctx)


OPS = {  # name: (function of the named inputs and implementation=, input names, backends that run it)
    "mhc_coefficients": (ops.mhc_coefficients, ("x", "phi", "alpha", "bias"), ("xla", "cpu")),
    "mhc_pre": (ops.mhc_pre, ("x", "h_pre"), ("xla", "cpu")),
    "mhc_post": (ops.mhc_post, ("x", "y", "h_post", "h_res"), ("xla", "cpu")),
    "mhc_connection": (_mhc_connection, ("x", "phi", "alpha", "bias"), ("xla", "cpu", "pallas")),
    "hc_connection": (_hc_connection, ("x", "w"), ("xla", "cpu")),
}  # Pallas in interpret mode is slow: its connection case runs all three of its kernels (maps, pre, post).
CASES = [(op, impl) for op, (_, _, impls) in OPS.items() for impl in impls]


def _value_and_grads(fn, args, cotangent_seed=3):
  """Outputs and the VJP of fixed random cotangents, jitted."""
  def run(*args):
    out, vjp = jax.vjp(fn, *args)
    leaves = jax.tree.leaves(out)
    keys = jax.random.split(jax.random.PRNGKey(cotangent_seed), len(leaves))
    cot = jax.tree.unflatten(jax.tree.structure(out),
                             [jax.random.normal(k, o.shape, o.dtype) for k, o in zip(keys, leaves)])
    return out, vjp(cot)
  return jax.jit(run)(*args)


def _token_sharded(mesh, a):
  """Per-token arrays ``[4, 4, ...]``: batch over data and fsdp, sequence over tensor; parameters replicated."""
  if a.ndim >= 3:
    return jax.device_put(a, NamedSharding(mesh, P(("data", "fsdp"), "tensor")))
  return jax.device_put(a, NamedSharding(mesh, P()))


@pytest.mark.parametrize("op, impl", CASES)
def test_sharded_op_equals_single_device(mesh, op, impl):
  fn, names, _ = OPS[op]
  inputs = _stream_inputs()
  args = [inputs[n] for n in names]
  fn = functools.partial(fn, implementation=impl)
  want = _value_and_grads(fn, args)
  with jax.set_mesh(mesh):
    sharded_args = [_token_sharded(mesh, a) for a in args]
    got = _value_and_grads(fn, sharded_args)
    jaxpr = str(jax.make_jaxpr(fn)(*sharded_args))
  assert ("shard_map" in jaxpr) == (impl != "xla")  # kernels per shard; XLA's ops left to the partitioner
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-5 * float(jnp.abs(w).max()))
  # Parameters came in replicated: their gradients are the sum over every shard, not one shard's part.
  assert len(got[1][0].sharding.device_set) == 8


class _Sublayer(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(C, C, rngs=rngs)

  def __call__(self, u):
    return jnp.tanh(self.dense(u))


@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_sharded_mhc_layer_equals_single_device(mesh, impl):
  layer = layers.ManifoldHyperConnection(_Sublayer(nnx.Rngs(1)), num_streams=N, features=C,
                                         implementation=impl, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer)
  x = _stream_inputs()["x"]

  def loss(params, x):
    out = nnx.merge(graphdef, params)(x)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  want = step(params, x)
  with jax.set_mesh(mesh):
    got = step(jax.device_put(params, NamedSharding(mesh, P())), _token_sharded(mesh, x))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-5 * float(jnp.abs(w).max()))


def test_auto_runs_the_cpu_kernels_per_shard(mesh):
  x = _stream_inputs()["x"].reshape(-1, N, C)
  with jax.set_mesh(mesh):
    assert sharding.token_axes(sharding.mesh_of(x)) == AXES
    built = dispatch.backend("cpu").unavailable(allow_build=False) is None
    assert dispatch.select("auto", ("pre", "post"), x).NAME == ("cpu" if built else "xla")


def test_tokens_that_do_not_split_evenly(mesh):
  x = _stream_inputs()["x"].reshape(-1, N, C)[:12]  # 12 tokens over 8 devices
  with jax.set_mesh(mesh):
    assert dispatch.select("auto", ("pre",), x).NAME == "xla"
    with pytest.raises(ValueError, match=r"12 tokens .* do not split evenly over the 8 devices"):
      dispatch.select("cpu", ("pre",), x)
    assert dispatch.select("xla", ("pre",), x).NAME == "xla"


def test_one_device_runs_directly():
  x = _stream_inputs()["x"].reshape(-1, N, C)
  assert sharding.token_axes(sharding.mesh_of(x)) == ()
  jaxpr = str(jax.make_jaxpr(lambda x: ops.mhc_pre(x, jnp.ones(x.shape[:-1]), implementation="cpu"))(x))
  assert "shard_map" not in jaxpr


def test_stream_axes_limits_the_token_split(mesh):
  """With the batch's axes given (data, fsdp), the kernels split tokens 4 ways and repeat over tensor."""
  inputs = _stream_inputs()
  args = [inputs[n] for n in ("x", "phi", "alpha", "bias")]
  fn = functools.partial(_mhc_connection, implementation="cpu")
  want = _value_and_grads(fn, args)
  with jax.set_mesh(mesh), ops.stream_axes(("data", "fsdp")):
    assert sharding.token_axes(sharding.mesh_of(args[0])) == ("data", "fsdp")
    sharded_args = [_token_sharded(mesh, a) for a in args]
    got = _value_and_grads(fn, sharded_args)
    assert "P(('data', 'fsdp'),)" in str(jax.make_jaxpr(fn)(*sharded_args))
  assert sharding.token_axes(mesh) == AXES  # the context is gone
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-5 * float(jnp.abs(w).max()))
