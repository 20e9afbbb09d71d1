"""Every implementation of the mHC ops against the plain equations (reference.py).

One mixin per op, one subclass per implementation. On a CPU the Pallas subclass runs the
same kernels in interpret mode; the jax-triton subclass needs a GPU (run with
JAX_PLATFORMS=cuda), its CPU twin is test_triton.py. Forward and VJP (random cotangents) across n in
{1, 2, 4, 8}, ragged C (37; 300 spans two 256-column chunks with a masked tail), ragged T,
fp32 and bf16 streams. The kernels must also lower to Triton for a GPU from this CPU
machine, and remat must really replay them.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc_jax import ops
from mhc_jax.ops import reference

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

  ``tf32``: a GEMM that runs in TF32 on a GPU (SPEC section 5), 10-bit mantissa products.
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
  out, vjp = jax.vjp(op, *args)
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


class CoefficientsMixin:
  IMPL: str

  @pytest.mark.parametrize("n, c", SHAPES)
  @pytest.mark.parametrize("dtype", DTYPES)
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

  @pytest.mark.parametrize("n, c", SHAPES)
  @pytest.mark.parametrize("dtype", DTYPES)
  def test_pre_forward_and_vjp(self, n, c, dtype):
    x, _, h_pre, _, _, key = _inputs(n, c, dtype)
    op = lambda x, h: ops.mhc_pre(x, h, implementation=self.IMPL)
    _check_vjp(op, reference.mhc_pre_reference, (x, h_pre), key, dtype)


class PostMixin:
  IMPL: str

  @pytest.mark.parametrize("n, c", SHAPES)
  @pytest.mark.parametrize("dtype", DTYPES)
  def test_post_forward_and_vjp(self, n, c, dtype):
    x, y, _, h_post, h_res, key = _inputs(n, c, dtype, seed=1)
    op = lambda *a: ops.mhc_post(*a, implementation=self.IMPL)
    _check_vjp(op, reference.mhc_post_reference, (x, y, h_post, h_res), key, dtype)


class TestXla(CoefficientsMixin, PreMixin, PostMixin):
  IMPL = "xla"


class TestPallas(CoefficientsMixin, PreMixin, PostMixin):
  IMPL = "pallas"

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
    from flax import nnx

    from mhc_jax.layers import ManifoldHyperConnection

    x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 4, 24))

    def run(impl):
      layer = ManifoldHyperConnection(nnx.Linear(24, 24, rngs=nnx.Rngs(0)), num_streams=4,
                                      features=24, implementation=impl, rngs=nnx.Rngs(1))
      return jax.value_and_grad(lambda x: jnp.sum(jnp.sin(layer(x))))(x)

    (v_p, g_p), (v_x, g_x) = run("pallas"), run("xla")
    np.testing.assert_allclose(v_p, v_x, rtol=1e-5)
    np.testing.assert_allclose(g_p, g_x, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not ON_GPU, reason="jax-triton runs on GPUs only (JAX_PLATFORMS=cuda); "
                    "the CPU twin is tests/ops/test_triton.py")
class TestTriton(CoefficientsMixin, PreMixin, PostMixin):
  IMPL = "triton"


# ------------------------------------------------------------------- GPU lowering


def _triton_kernels(fn, *args) -> list[str]:
  """Names of the Triton kernels in ``fn``'s StableHLO lowered for CUDA (no GPU needed)."""
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
