"""Every implementation of the stream ops against the plain equations (reference.py).

One mixin per op, one subclass per implementation. On a CPU the Pallas subclass runs the
same kernels in interpret mode. Forward and VJP (random cotangents) across n in
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


def _close(got, want, dtype):
  """fp32: tight. bf16: the stored result may differ from the fp32 truth by one bf16 rounding."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  if dtype == jnp.bfloat16:
    np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=2 ** -7 * np.abs(want).max())
  else:
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def _check_vjp(op, ref, args, key, dtype):
  """Forward and VJP of ``op`` against ``ref`` evaluated in fp32 on the same inputs."""
  out, vjp = jax.vjp(op, *args)
  args32 = [a.astype(jnp.float32) for a in args]
  want, ref_vjp = jax.vjp(ref, *args32)
  assert out.dtype == args[0].dtype
  _close(out, want, dtype)
  cot = jax.random.normal(key, out.shape).astype(out.dtype)
  grads, want_grads = vjp(cot), ref_vjp(cot.astype(jnp.float32))
  for g, w, a in zip(grads, want_grads, args):
    assert g.dtype == a.dtype and g.shape == a.shape
    _close(g, w, a.dtype)


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


class TestXla(PreMixin, PostMixin):
  IMPL = "xla"


class TestPallas(PreMixin, PostMixin):
  IMPL = "pallas"

  def test_float64_is_refused_with_a_clear_error(self, x64):
    x = jnp.ones((2, 4, 8), jnp.float64)
    with pytest.raises(ValueError, match="pallas.*float64"):
      ops.mhc_pre(x, jnp.ones((2, 4)), implementation="pallas")

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


# ------------------------------------------------------------------- GPU lowering


def _triton_kernels(fn, *args) -> list[str]:
  """Names of the Triton kernels in ``fn``'s StableHLO lowered for CUDA (no GPU needed)."""
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  calls = [line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line]
  return [re.search(r'name = "(\w+)"', line).group(1) for line in calls]


def _block(x, y, h_pre, h_post, h_res):
  u = ops.mhc_pre(x, h_pre, implementation="pallas")
  return jnp.sum(ops.mhc_post(x, u * y, h_post, h_res, implementation="pallas") ** 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_lowers_to_triton_for_cuda(dtype):
  x, y, h_pre, h_post, h_res, _ = _inputs(4, 300, dtype)
  names = _triton_kernels(jax.grad(_block, argnums=(0, 1, 2, 3, 4)), x, y, h_pre, h_post, h_res)
  assert sorted(names) == ["_post_bwd_kernel", "_post_fwd_kernel", "_pre_bwd_kernel", "_pre_fwd_kernel"]


def test_remat_replays_the_forward_kernels():
  """value_and_grad under jax.checkpoint: the forward kernels run again inside the backward."""
  args = _inputs(4, 37, jnp.bfloat16)[:5]
  grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4))
  plain = _triton_kernels(grad(_block), *args)
  remat = _triton_kernels(grad(jax.checkpoint(_block)), *args)
  count = lambda names, k: names.count(k)
  for k in ("_pre_fwd_kernel", "_post_fwd_kernel"):
    assert (count(plain, k), count(remat, k)) == (1, 2)
  for k in ("_pre_bwd_kernel", "_post_bwd_kernel"):
    assert (count(plain, k), count(remat, k)) == (1, 1)
