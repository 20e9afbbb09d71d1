"""Every implementation of the mHC ops against the plain equations (reference.py).

One mixin per op, one subclass per implementation. On a CPU the Pallas subclass runs the
same kernels in interpret mode (slow to compile: there it leaves out the cases that repeat a
code path, see TestPallas); the jax-triton subclass needs a GPU (run with
JAX_PLATFORMS=cuda), its CPU twin is test_triton.py. Forward and VJP (random cotangents) across n in
{1, 2, 4, 8}, ragged C (37; 300 spans two 256-column chunks with a masked tail), ragged T,
fp32 and bf16 streams. The kernels must also lower to Triton for a GPU from this CPU
machine, and remat must really replay them. The C++ CPU kernels (TestCpu) run for real here,
plus their own checks: many token blocks, HC's kernel, the fused connection's gradients and
bitwise reproducibility. What "auto" picks is tested in test_dispatch.py, the C++ build in
test_cpu_build.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc_jax import ops
from mhc_jax.ops import aot, dispatch, reference

SHAPES = [(1, 37), (2, 300), (4, 37), (4, 300), (8, 37)]  # (n, C)
DTYPES = [jnp.float32, jnp.bfloat16]
BATCH = (2, 3)  # T = 6 tokens: not a multiple of any token block


def _inputs(n, c, dtype, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 6)
  x = jax.random.normal(k[0], BATCH + (n, c)).astype(dtype)
  y = jax.random.normal(k[1], BATCH + (c,)).astype(dtype)
  h_pre = jax.random.uniform(k[2], BATCH + (n,))
  h_post = 2 * jax.random.uniform(k[3], BATCH + (n,))
  h_res = jax.nn.softmax(jax.random.normal(k[4], BATCH + (n, n)), axis=-1)
  return x, y, h_pre, h_post, h_res, k[5]


ON_GPU = jax.default_backend() == "gpu"


def _close(got, want, dtype, tf32=False):
  """fp32: tight. bf16: the stored result may differ from the fp32 truth by one bf16 rounding.

  ``tf32``: a GEMM that runs in TF32 on a GPU (docs/math.md §5), 10-bit mantissa products.
  """
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  if tf32 and ON_GPU:
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=5e-3 * np.abs(want).max())
  elif dtype == jnp.bfloat16:
    np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=2 ** -7 * np.abs(want).max())
  else:
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def _check_vjp(op, ref, args, key, out_dtype, tf32=False):
  """Forward and VJP of ``op`` against ``ref`` evaluated in fp32 on the same inputs.

  ``op`` may return an array or a tuple of arrays; every output must have ``out_dtype``.
  """
  out, vjp = jax.vjp(jax.jit(op), *args)  # jitted: one compile, not one per eager op
  # ``ref`` runs as it comes. The op references run eagerly: the coefficients' unrolled Sinkhorn
  # repeats the same few ops at the same shapes, which JAX's per-op cache (shared by every test
  # in the module) then serves, where one jit compile of the unrolled graph takes ~10 s a shape.
  want, ref_vjp = jax.vjp(ref, *[a.astype(jnp.float32) for a in args])
  outs, wants = jax.tree.leaves(out), jax.tree.leaves(want)
  for o, w in zip(outs, wants, strict=True):
    assert o.dtype == out_dtype
    _close(o, w, out_dtype, tf32)
  keys = jax.random.split(key, len(outs))
  cot = jax.tree.unflatten(jax.tree.structure(out),
                           [jax.random.normal(k, o.shape).astype(o.dtype) for k, o in zip(keys, outs)])
  grads, want_grads = vjp(cot), ref_vjp(jax.tree.map(lambda c: c.astype(jnp.float32), cot))
  for g, w, a in zip(grads, want_grads, args, strict=True):
    assert g.dtype == a.dtype and g.shape == a.shape
    _close(g, w, a.dtype, tf32)


def over_shapes_and_dtypes(test):
  """Runs ``test(self, n, c, dtype)`` for every (n, C) in SHAPES and every stream dtype, but those
  the class's ``leaves_out(test_name, n, c, dtype_name)`` names (see pytest_generate_tests)."""
  test.over_shapes_and_dtypes = True
  return test


def pytest_generate_tests(metafunc):
  if getattr(metafunc.function, "over_shapes_and_dtypes", False):
    leaves_out = getattr(metafunc.cls, "leaves_out", lambda test, n, c, dtype: False)
    cases = [pytest.param(n, c, d, id=f"{jnp.dtype(d).name}-{n}-{c}") for n, c in SHAPES for d in DTYPES
             if not leaves_out(metafunc.function.__name__, n, c, jnp.dtype(d).name)]
    metafunc.parametrize("n, c, dtype", cases)


class CoefficientsMixin:
  IMPL: str

  @over_shapes_and_dtypes
  def test_coefficients_forward_and_vjp(self, n, c, dtype):
    x, _, _, _, _, key = _inputs(n, c, dtype, seed=2)
    k = jax.random.split(key, 3)
    phi = jax.random.normal(k[0], (n * c, ops.num_coefficients(n))) / np.sqrt(n * c)
    alpha = jnp.array([0.7, 1.1, 1.6])  # distinct gates: a swapped gate would show
    bias = 0.5 * jax.random.normal(k[1], (ops.num_coefficients(n),))
    op = lambda *a: ops.mhc_coefficients(*a, implementation=self.IMPL)
    _check_vjp(op, reference.mhc_coefficients_reference, (x, phi, alpha, bias), k[2], jnp.float32,
               tf32=True)


class PreMixin:
  IMPL: str

  @over_shapes_and_dtypes
  def test_pre_forward_and_vjp(self, n, c, dtype):
    x, _, h_pre, _, _, key = _inputs(n, c, dtype)
    op = lambda x, h: ops.mhc_pre(x, h, implementation=self.IMPL)
    _check_vjp(op, reference.mhc_pre_reference, (x, h_pre), key, dtype)


class PostMixin:
  IMPL: str

  @over_shapes_and_dtypes
  def test_post_forward_and_vjp(self, n, c, dtype):
    x, y, _, h_post, h_res, key = _inputs(n, c, dtype, seed=1)
    op = lambda *a: ops.mhc_post(*a, implementation=self.IMPL)
    _check_vjp(op, reference.mhc_post_reference, (x, y, h_post, h_res), key, dtype)


def _mhc_params(n, c, key):
  k = jax.random.split(key, 2)
  phi = jax.random.normal(k[0], (n * c, ops.num_coefficients(n))) / np.sqrt(n * c)
  return phi, jnp.array([0.7, 1.1, 1.6]), 0.5 * jax.random.normal(k[1], (ops.num_coefficients(n),))


def _hc_params(n, c, key):
  k = jax.random.split(key, 4)
  return (jax.random.normal(k[0], (n,)), 1 + 0.3 * jax.random.normal(k[1], (n,)),
          jax.random.normal(k[2], (n, n)), 0.3 * jax.random.normal(k[3], (c, n + 2)), jnp.array(0.7),
          jnp.array(-0.4))


def _through_connection(pre_fn, x, *params):
  """``(u, x')`` of one connection whose sublayer is ``sin``: ``*_connection_pre`` then ``connection_post``."""
  u, ctx = pre_fn(x, *params)
  return u, ops.connection_post(jnp.sin(u.astype(jnp.float32)), ctx)


def _reference_connection(maps_fn, x, *params):
  h_pre, h_post, h_res = maps_fn(x, *params)
  u = reference.mhc_pre_reference(x, h_pre)
  return u, reference.mhc_post_reference(x, jnp.sin(u), h_post, h_res)


# The connection references are jitted (2-7 s a shape, less than their first eager run), here
# once, so that the compile is shared by every class.
@jax.jit
def _mhc_connection_reference(x, *params):
  return _reference_connection(lambda *a: reference.mhc_coefficients_reference(*a, num_iters=5), x, *params)


@jax.jit
def _hc_connection_reference(x, a_pre, b_post, a_res, w, s_a, s_b):
  maps_fn = lambda x: reference.hc_coefficients_reference(x, w, s_a, s_b, a_pre, b_post, a_res)
  return _reference_connection(maps_fn, x)


# The connection's plumbing is the same at every n: classes whose ops take n = 8 alone leave it out
# of the connection on a CPU.
CONNECTION_SHAPES_LEFT_ON_CPU = [(1, 37), (4, 300)] + ([(8, 37)] if ON_GPU else [])


class ConnectionMixin:
  """``u, ctx = *_connection_pre(x, ...)`` then ``connection_post(F(u), ctx)``: the equations, every VJP.

  fp32 streams: the op mixins check bf16 storage op by op; through a whole connection the
  fp32 parameters' gradients sum many bf16-rounded terms, too loose for an fp32 reference
  (the C++ backend's bf16 connection is checked against XLA's in TestCpu).
  """
  IMPL: str
  HC = True  # whether the backend has HC's maps

  @pytest.mark.parametrize("n, c", [(1, 37), (4, 300), (8, 37)])  # the ops alone take every shape
  @pytest.mark.parametrize("kind", ["mhc", "hc"])
  def test_connection_forward_and_vjp(self, kind, n, c):
    if kind == "hc" and not self.HC:
      pytest.skip(f"{self.IMPL!r} has no HC kernel")
    x, *_, key = _inputs(n, c, jnp.float32, seed=3)
    k = jax.random.split(key)
    if kind == "mhc":
      params = _mhc_params(n, c, k[0])
      # 5 Sinkhorn iterations: the plumbing is under test here, and 20 unrolled reference
      # iterations dominate the compile time
      pre_fn = lambda x, *p: ops.mhc_connection_pre(x, *p, num_iters=5, implementation=self.IMPL)
      ref = _mhc_connection_reference
    else:
      params = _hc_params(n, c, k[0])
      pre_fn = lambda x, *p: ops.hc_connection_pre(x, *p, implementation=self.IMPL)
      ref = _hc_connection_reference
    _check_vjp(lambda *a: _through_connection(pre_fn, *a), ref, (x, *params), k[1], jnp.float32,
               tf32=kind == "mhc")


class TestXla(CoefficientsMixin, PreMixin, PostMixin, ConnectionMixin):
  """XLA's ops are plain jnp code with no blocks, tiles or padding: C and T only change shapes.
  So on a CPU the ops run at n = 1 (a 1 x 1 Sinkhorn), 4 and 8, in both dtypes, and the
  connection (the same plumbing at every n) at n = 1 and 4; the kernel classes take every case.
  """
  IMPL = "xla"

  @staticmethod
  def leaves_out(test, n, c, dtype):
    return not ON_GPU and (n, c) in ((2, 300), (4, 37))

  @pytest.mark.parametrize("n, c", CONNECTION_SHAPES_LEFT_ON_CPU)
  @pytest.mark.parametrize("kind", ["mhc", "hc"])
  def test_connection_forward_and_vjp(self, kind, n, c):
    super().test_connection_forward_and_vjp(kind, n, c)


class TestPallas(CoefficientsMixin, PreMixin, PostMixin, ConnectionMixin):
  """On the CPU the kernels run in interpret mode, where a case compiles for 10-60 s, so there
  the cases that repeat a code path are left out (on a GPU every case runs):

  * bf16 at n = 8: a bf16 stream only changes the kernels' loads and stores (fp32 math
    inside), the same code at every n, which the bf16 cases at n = 1, 2, 4 cover; n = 8 (its
    own block sizes and padded width) is checked in fp32, the tighter tolerance;
  * every op at (4, 37): the coefficient kernel sees C only through P = N*C, walked in 64-wide
    chunks, and (4, 300) has the same padded width and blocks, and a ragged last chunk too;
    the stream kernels take (4, 37) in one ragged 64-column chunk of 16 tokens, as at (1, 37),
    and unroll the same N = 4 as at (4, 300);
  * the connection at n = 8: on Pallas it is the maps, pre and post kernels (no fused one),
    each checked at n = 8 alone; the plumbing is the same at every n.
  """
  IMPL = "pallas"
  HC = False

  @staticmethod
  def leaves_out(test, n, c, dtype):
    if ON_GPU:
      return False
    return (n == 8 and dtype == "bfloat16") or (n, c) == (4, 37)

  @pytest.mark.parametrize("n, c", CONNECTION_SHAPES_LEFT_ON_CPU)
  @pytest.mark.parametrize("kind", ["mhc"])  # no HC kernel
  def test_connection_forward_and_vjp(self, kind, n, c):
    super().test_connection_forward_and_vjp(kind, n, c)

  def test_float64_is_refused_with_a_clear_error(self, x64):
    x = jnp.ones((2, 4, 8), jnp.float64)
    with pytest.raises(ValueError, match="pallas.*float64"):
      ops.mhc_pre(x, jnp.ones((2, 4)), implementation="pallas")
    with pytest.raises(ValueError, match="pallas.*float64"):
      ops.mhc_coefficients(x, jnp.ones((32, 24)), jnp.ones(3), jnp.ones(24), implementation="pallas")

  def test_implicit_sinkhorn_gradient_is_refused(self):
    x = jnp.ones((2, 4, 8))
    with pytest.raises(ValueError, match="sinkhorn_grad='implicit'"):
      ops.mhc_coefficients(x, jnp.ones((32, 24)), jnp.ones(3), jnp.ones(24), sinkhorn_grad="implicit",
                           implementation="pallas")

  def test_mhc_layer_matches_xla(self):
    """The layer on the Pallas kernels. Two streams: the layer's plumbing is under test here (the
    kernels at n = 4 and 8 are checked op by op), and in interpret mode n = 4 compiles 2x longer."""
    from flax import nnx

    from mhc_jax.layers import ManifoldHyperConnection

    x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 2, 24))

    def run(impl):
      layer = ManifoldHyperConnection(nnx.Linear(24, 24, rngs=nnx.Rngs(0)), num_streams=2,
                                      features=24, implementation=impl, rngs=nnx.Rngs(1))
      return jax.value_and_grad(lambda x: jnp.sum(jnp.sin(layer(x))))(x)

    (v_p, g_p), (v_x, g_x) = run("pallas"), run("xla")
    np.testing.assert_allclose(v_p, v_x, rtol=1e-5)
    np.testing.assert_allclose(g_p, g_x, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not ON_GPU, reason="jax-triton runs on GPUs only (JAX_PLATFORMS=cuda); "
                    "the CPU twin is tests/ops/test_triton.py")
class TestTriton(CoefficientsMixin, PostMixin):
  IMPL = "triton"

  def test_ops_without_a_kernel_are_refused(self):
    x = jnp.ones((2, 4, 8))
    with pytest.raises(ValueError, match="'triton' has no kernel for pre"):
      ops.mhc_pre(x, jnp.ones((2, 4)), implementation="triton")
    with pytest.raises(ValueError, match="'triton' has no kernel for hc_maps"):
      ops.hc_coefficients(x, jnp.ones(4), jnp.ones(4), jnp.eye(4), jnp.ones((8, 6)), implementation="triton")


# ------------------------------------------------------------------- GPU lowering


def _triton_kernels(fn, *args) -> list[str]:
  """Names of the Triton kernels in ``fn``'s StableHLO lowered for an H200 (no GPU needed)."""
  with aot.abstract_gpu(aot.TARGETS["H200"]):
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  calls = [line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line]
  return [re.search(r'name = "(\w+)"', line).group(1) for line in calls]


FORWARD_KERNELS = ["_coef_fwd_kernel", "_post_fwd_kernel", "_pre_fwd_kernel"]
BACKWARD_KERNELS = ["_coef_bwd_kernel", "_post_bwd_kernel", "_pre_bwd_kernel"]


def _block(x, y, phi, alpha, bias):
  """One mHC sublayer on the Pallas kernels, with ``y`` standing in for the sublayer."""
  h_pre, h_post, h_res = ops.mhc_coefficients(x, phi, alpha, bias, implementation="pallas")
  u = ops.mhc_pre(x, h_pre, implementation="pallas")
  return jnp.sum(ops.mhc_post(x, u * y, h_post, h_res, implementation="pallas") ** 2)


def _block_inputs(n, c, dtype):
  x, y, *_ = _inputs(n, c, dtype)
  k = ops.num_coefficients(n)
  return x, y, jnp.full((n * c, k), 0.01), jnp.ones(3), jnp.zeros(k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_lowers_to_triton_for_cuda(dtype):
  names = _triton_kernels(jax.grad(_block, argnums=(0, 1, 2, 3, 4)), *_block_inputs(4, 300, dtype))
  assert sorted(names) == sorted(FORWARD_KERNELS + BACKWARD_KERNELS)


def test_remat_replays_the_forward_kernels():
  """value_and_grad under jax.checkpoint: the forward kernels run again inside the backward."""
  args = _block_inputs(4, 37, jnp.bfloat16)
  grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4))
  plain = _triton_kernels(grad(_block), *args)
  remat = _triton_kernels(grad(jax.checkpoint(_block)), *args)
  for k in FORWARD_KERNELS:
    assert (plain.count(k), remat.count(k)) == (1, 2), k
  for k in BACKWARD_KERNELS:
    assert (plain.count(k), remat.count(k)) == (1, 1), k


# ------------------------------------------------------------------- C++ CPU kernels


def _cpu_unavailable() -> str | None:
  return dispatch.backend("cpu").unavailable(allow_build=True)


@pytest.mark.skipif(_cpu_unavailable() is not None, reason="the C++ kernels need a C++20 compiler (CXX)")
class TestCpu(CoefficientsMixin, PreMixin, PostMixin, ConnectionMixin):
  """The C++ kernels (fp32 math; bf16 streams are cast around them)."""
  IMPL = "cpu"

  @pytest.mark.parametrize("t, n, c", [(6, 4, 37), (50, 3, 300), (21, 8, 16), (5, 1, 40)])
  @pytest.mark.parametrize("fused", [False, True])
  def test_hc_kernel_matches_xla(self, t, n, c, fused):
    """HC's kernel alone (the maps) and fused (maps, pre-apply, passed stream), every VJP, many blocks."""
    x = jax.random.normal(jax.random.PRNGKey(n * c), (t, n, c))
    params = _hc_params(n, c, jax.random.PRNGKey(t))

    def run(impl):
      if fused:
        f = lambda *a: _through_connection(lambda *b: ops.hc_connection_pre(*b, implementation=impl), *a)
      else:
        f = lambda *a: ops.hc_coefficients(*a, implementation=impl)
      out, vjp = jax.vjp(jax.jit(f), x, *params)  # jitted: one compile, not one per eager op
      cot = tuple(jax.random.normal(jax.random.PRNGKey(i), o.shape) for i, o in enumerate(out))
      return out, vjp(cot)

    for got, want in zip(jax.tree.leaves(run("cpu")), jax.tree.leaves(run("xla")), strict=True):
      _close(got, want, jnp.float32)

  @pytest.mark.parametrize("kind", ["mhc", "hc"])
  @pytest.mark.parametrize("dtype", DTYPES)
  def test_connection_layers_match_xla(self, kind, dtype):
    """The layers run the fused connection: every parameter and input gradient must match."""
    from flax import nnx

    from mhc_jax import layers

    x = jax.random.normal(jax.random.PRNGKey(3), (2, 21, 4, 40)).astype(dtype)

    def run(impl):
      conn = layers.make_connection(kind, nnx.Linear(40, 40, rngs=nnx.Rngs(0)), num_streams=4,
                                    features=40, implementation=impl, rngs=nnx.Rngs(1))
      if kind == "hc":  # w = 0 at init: make the dynamic part matter
        conn.w[...] = 0.3 * jax.random.normal(jax.random.PRNGKey(5), conn.w[...].shape)
      graphdef, state = nnx.split(conn)
      loss = lambda state, x: jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x).astype(jnp.float32)))
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(state, x)

    (value, grads), (want_value, want_grads) = run("cpu"), run("xla")
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
      _close(g, w, dtype)

  def test_the_fused_connection_keeps_every_gradient(self):
    """The passed stream and the fused pre-apply, with the maps in ctx also used downstream."""
    x = jax.random.normal(jax.random.PRNGKey(0), (21, 4, 40))  # two token blocks, ragged C
    phi = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (160, 24))
    bias = jax.random.normal(jax.random.PRNGKey(2), (24,))

    def block(impl, x, phi, bias):
      u, ctx = ops.mhc_connection_pre(x, phi, jnp.ones(3), bias, implementation=impl)
      assert ctx.x.shape == x.shape and u.shape == (21, 40) and ctx.implementation == impl
      # the maps are used again downstream: their cotangents must reach the kernel too
      return ops.connection_post(jnp.tanh(u), ctx) * (jnp.sum(ctx.h_pre) + jnp.sum(ctx.h_res ** 2))

    # jitted: one compile per implementation, not one per eager op
    loss = lambda impl: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(block(impl, *a) ** 2),
                                                   argnums=(0, 1, 2)))(x, phi, bias)
    for got, want in zip(jax.tree.leaves(loss("cpu")), jax.tree.leaves(loss("xla")), strict=True):
      _close(got, want, jnp.float32)

  @pytest.mark.parametrize("n, c, t", [(4, 300, 53), (3, 37, 16), (8, 64, 130)])
  def test_many_token_blocks_match_xla(self, n, c, t):
    """Several 16-token blocks, a ragged last one, and more tokens than weight-gradient slots."""
    k = jax.random.split(jax.random.PRNGKey(7), 5)
    x = jax.random.normal(k[0], (t, n, c))
    y = jax.random.normal(k[1], (t, c))
    phi = jax.random.normal(k[2], (n * c, ops.num_coefficients(n))) / np.sqrt(n * c)
    alpha, bias = jnp.array([0.7, 1.1, 1.6]), 0.5 * jax.random.normal(k[3], (ops.num_coefficients(n),))

    def block(impl, x, y, phi, alpha, bias):
      h_pre, h_post, h_res = ops.mhc_coefficients(x, phi, alpha, bias, implementation=impl)
      u = ops.mhc_pre(x, h_pre, implementation=impl)
      return ops.mhc_post(x, jnp.tanh(u) * y, h_post, h_res, implementation=impl)

    args = (x, y, phi, alpha, bias)
    cot = jax.random.normal(k[4], (t, n, c))
    # jitted: one compile per implementation, not one per eager op (same kernels, same math)
    (out, vjp), (want, want_vjp) = (jax.vjp(jax.jit(lambda *a: block(i, *a)), *args) for i in ("cpu", "xla"))
    _close(out, want, jnp.float32)
    for g, w in zip(vjp(cot), want_vjp(cot), strict=True):
      _close(g, w, jnp.float32)

  def test_results_are_bitwise_reproducible(self):
    x = jax.random.normal(jax.random.PRNGKey(0), (200, 4, 64))
    phi = jax.random.normal(jax.random.PRNGKey(1), (256, 24)) * 0.05
    loss = lambda x, phi: jnp.sum(jnp.sin(ops.mhc_coefficients(x, phi, jnp.ones(3), jnp.zeros(24),
                                                               implementation="cpu")[2]))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    first, second = grad(x, phi), grad(x, phi)
    for a, b in zip(first, second, strict=True):
      np.testing.assert_array_equal(a, b)

  def test_bad_input_is_refused_with_clear_errors(self, x64):
    with pytest.raises(ValueError, match="cpu.*float64"):
      ops.mhc_pre(jnp.ones((2, 4, 8), jnp.float64), jnp.ones((2, 4)), implementation="cpu")
    with pytest.raises(ValueError, match="1 <= N <= 8"):
      ops.mhc_pre(jnp.ones((2, 9, 8), jnp.float32), jnp.ones((2, 9)), implementation="cpu")
    f32 = lambda *shape: jnp.ones(shape, jnp.float32)
    with pytest.raises(ValueError, match="sinkhorn_grad='implicit'"):
      ops.mhc_coefficients(f32(2, 4, 8), f32(32, 24), f32(3), f32(24), sinkhorn_grad="implicit",
                           implementation="cpu")
