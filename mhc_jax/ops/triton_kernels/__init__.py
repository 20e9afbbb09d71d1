"""jax-triton launches of the Triton kernels in :mod:`.kernels` (``implementation="triton"``).

GPU only, and optional: ``pip install 'mhc_jax[triton]'`` brings jax-triton and Triton.
Nothing here is imported until an op asks for ``implementation="triton"``. Covers the
Sinkhorn (forward and exact backward, iterations replayed on-chip) and the post/res merge
(forward and backward), each with a custom VJP that saves only the op's inputs.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc_jax.ops.streams import saving_inputs

NUM_WARPS, NUM_STAGES = 4, 1  # every launch (mhc_jax.ops.aot compiles with the same)
INSTALL_HINT = ("implementation='triton' needs the optional jax-triton kernels: "
                "pip install 'mhc_jax[triton]' (with a CUDA build of jax)")


def modules():
  """(jax_triton, kernels), or an ImportError that says how to install them."""
  try:
    import jax_triton
    import triton  # noqa: F401
  except ImportError as e:
    raise ImportError(f"{INSTALL_HINT}; import failed: {e}") from e
  from mhc_jax.ops.triton_kernels import kernels
  _adapt_dce_rule(jax_triton)
  return jax_triton, kernels


@functools.cache  # modules() runs on every launch; the rule needs wrapping once
def _adapt_dce_rule(jax_triton) -> None:
  """jax-triton <= 0.4.1 registers a dead-code rule ``(used_outs, eqn)``; jax 0.12 calls every
  rule as ``(used_outs, live_ins, eqn)``. Wrap it once so both jax releases work."""
  from jax._src.interpreters import partial_eval as pe
  primitive = jax_triton.triton_lib.triton_kernel_call_p
  rule = pe.dce_rules.get(primitive)
  takes = lambda f: len(inspect.signature(f).parameters)
  if rule is not None and takes(rule) == 2 and takes(pe._default_dce_rule) == 3:
    pe.dce_rules[primitive] = lambda used_outs, live_ins, eqn: rule(used_outs, eqn)


def _launch(kernel_name: str, args, out_shape, grid, **params):
  jt, kernels = modules()
  # On a machine without a GPU (lowering for CUDA ahead of time) compile for sm_90.
  target = None if jax.default_backend() == "gpu" else 90
  return jt.triton_call(*args, kernel=getattr(kernels, kernel_name), out_shape=out_shape,
                        grid=grid, num_warps=NUM_WARPS, num_stages=NUM_STAGES, compute_capability=target, **params)


# ------------------------------------------------------------------------ Sinkhorn


def _sinkhorn_call(kernel_name: str, arrays_TxM, n, num_iters, eps):
  """The forward (``arrays = (logits,)``) or backward (``(logits, g)``) kernel on ``[T, N*N]``."""
  _, kernels = modules()
  np_, block_t = kernels.sinkhorn_blocks(n)
  t = arrays_TxM[0].shape[0]
  return _launch(kernel_name, (*arrays_TxM, t), jax.ShapeDtypeStruct(arrays_TxM[0].shape, jnp.float32),
                 (pl.cdiv(t, block_t),), N=n, NP=np_, ITERS=num_iters, EPS=eps, BLOCK_T=block_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def sinkhorn(logits_XxNxN, num_iters: int, eps: float):
  """DeepSeek's Sinkhorn sequence (as :func:`mhc_jax.ops.sinkhorn_knopp`) in fp32."""
  return _sinkhorn_fwd(logits_XxNxN, num_iters, eps)[0]


def _sinkhorn_fwd(logits, num_iters, eps):
  n = logits.shape[-1]
  l_TxM = logits.astype(jnp.float32).reshape(-1, n * n)
  p_TxM = _sinkhorn_call("sinkhorn_fwd_kernel", (l_TxM,), n, num_iters, eps)
  return p_TxM.reshape(logits.shape), logits


def _sinkhorn_bwd(num_iters, eps, logits, g):
  n = logits.shape[-1]
  l_TxM = logits.astype(jnp.float32).reshape(-1, n * n)
  g_TxM = g.astype(jnp.float32).reshape(-1, n * n)
  g_l = _sinkhorn_call("sinkhorn_bwd_kernel", (l_TxM, g_TxM), n, num_iters, eps)
  return (g_l.reshape(logits.shape).astype(logits.dtype),)


sinkhorn.defvjp(_sinkhorn_fwd, _sinkhorn_bwd)


# ---------------------------------------------------------------------------- post


def _flat(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN):
  *batch, n, c = x_XxNxC.shape
  t = math.prod(batch)
  f32 = jnp.float32
  return (t, n, c), (x_XxNxC.reshape(t, n * c), y_XxC.reshape(t, c),
                     h_post_XxN.astype(f32).reshape(t, n), h_res_XxNxN.astype(f32).reshape(t, n * n))


def post_fwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN):
  _, kernels = modules()
  (t, n, c), flat = _flat(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN)
  np_, block_t, block_c = kernels.post_blocks(n, c)
  out = _launch("post_fwd_kernel", (*flat, t, c), jax.ShapeDtypeStruct((t, n * c), x_XxNxC.dtype),
                (pl.cdiv(t, block_t),), N=n, NP=np_, BLOCK_T=block_t, BLOCK_C=block_c)
  return out.reshape(x_XxNxC.shape)


def post_bwd(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN, g_XxNxC):
  _, kernels = modules()
  args = (x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN)
  (t, n, c), flat = _flat(*args)
  np_, block_t, block_c = kernels.post_blocks(n, c)
  f32 = jnp.float32
  out = (jax.ShapeDtypeStruct((t, n * c), x_XxNxC.dtype), jax.ShapeDtypeStruct((t, c), y_XxC.dtype),
         jax.ShapeDtypeStruct((t, n), f32), jax.ShapeDtypeStruct((t, n * n), f32))
  grads = _launch("post_bwd_kernel", (*flat, g_XxNxC.reshape(t, n * c), t, c), out,
                  (pl.cdiv(t, block_t),), N=n, NP=np_, BLOCK_T=block_t, BLOCK_C=block_c)
  return tuple(g.reshape(a.shape).astype(a.dtype) for g, a in zip(grads, args))


post = saving_inputs(post_fwd, post_bwd)
"""``x'_k = sum_j h_res[k, j] x_j + h_post[k] y`` in x's dtype (as ``mhc_post``), custom VJP."""
