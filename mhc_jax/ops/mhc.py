"""The three mHC ops in the fused, reordered form of SPEC section 2 (paper Eqs. 14-19).

  mhc_coefficients: x -> (H_pre, H_post, H_res)   one GEMM over v = vec(x), RMS after it
  mhc_pre:          u = sum_i H_pre[i] x_i          the sublayer input
  mhc_post:         x' = H_res x + H_post^T y       the merged stream update

Every op takes ``implementation=``:
  * ``"xla"``: the jnp implementation below (any backend, any float dtype incl. fp64);
  * ``"pallas"``: the fused kernels of :mod:`mhc_jax.ops.pallas` (Triton on GPUs, interpret
    mode elsewhere; fp32/bf16/fp16 streams): the coefficient kernel (GEMM + RMS + gates +
    Sinkhorn in one pass, the Sinkhorn VJP replayed on-chip; exact Sinkhorn gradient only),
    the pre-apply and the post/res merge, each forward and backward;
  * ``"triton"``: jax-triton kernels (:mod:`mhc_jax.ops.triton_kernels`, GPUs only, the
    optional ``[triton]`` extra) for the Sinkhorn inside ``mhc_coefficients`` (the projection
    stays with XLA) and for ``mhc_post``; ``mhc_pre`` runs the xla path;
  * ``"cpu"``: fused C++ kernels for XLA:CPU through ``jax.ffi`` (:mod:`mhc_jax.ops.cpu`,
    compiled on first use; N <= 8, math in fp32): one pass per op, the coefficient kernel
    doing GEMM + RMS + gates + Sinkhorn per token, its backward the exact Sinkhorn VJP;
  * ``"auto"``: ``"cpu"`` on a single CPU device for fp32 streams with N <= 8, the exact
    Sinkhorn gradient, and kernels that build; else ``"xla"`` (with several devices XLA's
    partitioner would all-gather a custom call's sharded operands). ``"xla"`` on GPUs and
    TPUs: the GPU kernels are checked in interpret mode and lowered to Triton, but not yet
    timed on a GPU.
The math runs in fp32 (fp64 for fp64 inputs) whatever the stream dtype; outputs of
``mhc_pre`` and ``mhc_post`` are stored in the stream dtype. Each op has a custom VJP that
saves its inputs in their own dtype (an fp32 upcast of a bf16 stream is never stored).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc_jax import validation as _checks
from mhc_jax.ops import cpu, pallas, triton_kernels
from mhc_jax.ops._projection import rms_projection
from mhc_jax.ops._vjp import saving_inputs
from mhc_jax.ops.sinkhorn import sinkhorn_knopp

IMPLEMENTATIONS = ("auto", "xla", "pallas", "triton", "cpu")


def resolve_implementation(implementation: str) -> str:
  """Checks an implementation name and that it can run here; ``"auto"`` stays ``"auto"``.

  ``"auto"`` is settled per call by the stream's dtype and N (see the module docstring).
  """
  _checks.check_choice("implementation", implementation, IMPLEMENTATIONS)
  if implementation == "triton":
    if jax.default_backend() != "gpu":
      raise ValueError(f"implementation='triton' runs on GPUs only (jax-triton has no CPU mode); the "
                       f"backend is {jax.default_backend()!r}: use 'pallas' (interpret mode) or 'xla'")
    triton_kernels._modules()  # an ImportError that says how to install them
  if implementation == "cpu":
    if jax.default_backend() != "cpu":
      raise ValueError(f"implementation='cpu' runs on the CPU backend only; the backend is "
                       f"{jax.default_backend()!r}: use 'xla', 'pallas' or 'triton'")
    cpu.check_available()
  return implementation


def _concrete(implementation: str, x: jax.Array, sinkhorn_grad: str = "exact") -> str:
  """The implementation one op call runs: ``"auto"`` settled for this x."""
  impl = resolve_implementation(implementation)
  if impl == "cpu" and not 1 <= x.shape[-2] <= cpu.MAX_STREAMS:
    raise ValueError(f"implementation='cpu' takes 1 <= N <= {cpu.MAX_STREAMS} streams; got x of shape "
                     f"{x.shape} (use 'xla' or 'auto')")
  if impl != "auto":
    return impl
  # One CPU device only: XLA's partitioner replicates a custom call's operands (all-gathers
  # them), so sharded programs keep the XLA ops.
  if (jax.default_backend() == "cpu" and jax.device_count() == 1 and x.dtype == jnp.float32
      and sinkhorn_grad == "exact" and 1 <= x.shape[-2] <= cpu.MAX_STREAMS
      and cpu.build_error() is None):
    return "cpu"
  return "xla"


def num_coefficients(n: int) -> int:
  """K = N*N + 2*N: the columns of phi, ordered [pre (N) | post (N) | res (N*N, row-major)]."""
  return n * n + 2 * n


def _column_scales(alpha_3: jax.Array, n: int) -> jax.Array:
  """[alpha_pre]*N + [alpha_post]*N + [alpha_res]*N*N as one K vector."""
  return jnp.concatenate([
      jnp.broadcast_to(alpha_3[0], (n,)),
      jnp.broadcast_to(alpha_3[1], (n,)),
      jnp.broadcast_to(alpha_3[2], (n * n,)),
  ])


def mhc_coefficients(
    x: jax.Array,
    phi: jax.Array,
    alpha: jax.Array,
    bias: jax.Array,
    *,
    num_iters: int = 20,
    sinkhorn_eps: float = 1e-6,
    sinkhorn_grad: str = "exact",
    pre_eps: float = 1e-6,
    post_mult: float = 2.0,
    rms_eps: float = 1e-6,
    implementation: str = "auto",
    with_pre: bool = False,
    pass_stream: bool = False,
) -> tuple[jax.Array, ...]:
  """Per-token mHC mixing maps from the raw stream state (SPEC section 2).

  Args:
    x: ``[..., N, C]`` stream state, any float dtype (bf16 in training).
    phi: ``[N*C, K]`` projection, columns [pre | post | res (row-major)], K = N*N + 2N.
    alpha: ``[3]`` gates (alpha_pre, alpha_post, alpha_res).
    bias: ``[K]``.
    num_iters, sinkhorn_eps, sinkhorn_grad: passed to :func:`sinkhorn_knopp`.
    pre_eps: added to sigmoid for H_pre (DeepSeek: 1e-6).
    post_mult: H_post = post_mult * sigmoid (paper and DeepSeek-V4: 2).
    rms_eps: epsilon of the RMS taken over the flattened N*C vector.
    implementation: ``"auto"`` | ``"xla"`` | ``"pallas"`` | ``"triton"`` | ``"cpu"`` (the
      kernels compute the exact Sinkhorn gradient: ``sinkhorn_grad="exact"`` only).
    with_pre: also return the sublayer input ``u = mhc_pre(x, h_pre)`` (the ``"cpu"`` kernels
      compute it, and its gradient, in the same pass over x).
    pass_stream: also return x, last, for the ops that follow to use instead of x. With the
      ``"cpu"`` kernels and an fp32 x, the gradient reaching x through them is then added
      inside this op's backward pass (XLA would add the ops' stream gradients in passes of
      its own); elsewhere it is x unchanged.

  Returns:
    ``(h_pre [..., N], h_post [..., N], h_res [..., N, N])`` in fp32 (fp64 for fp64 input),
    then u ``[..., C]`` in x's dtype if ``with_pre``, then x if ``pass_stream``.
  """
  x, phi, alpha, bias = map(jnp.asarray, (x, phi, alpha, bias))
  impl, n, c = _check_stream(x, implementation, sinkhorn_grad)
  for name, a in (("phi", phi), ("alpha", alpha), ("bias", bias)):
    _checks.check_float(name, a)
  if impl in ("pallas", "triton", "cpu") and sinkhorn_grad != "exact":
    raise ValueError(f"implementation={impl!r} computes the exact Sinkhorn gradient on-chip; "
                     f"sinkhorn_grad={sinkhorn_grad!r} needs implementation='xla'")
  k = num_coefficients(n)
  _checks.check_shape("phi", phi, (n * c, k), f"[N*C, N*N+2N] for N={n}, C={c}")
  _checks.check_shape("alpha", alpha, (3,), "(alpha_pre, alpha_post, alpha_res)")
  _checks.check_shape("bias", bias, (k,), f"[N*N+2N] for N={n}")
  _checks.check_nonnegative("rms_eps", rms_eps)
  _checks.check_int("num_iters", num_iters, 1)
  _checks.check_nonnegative("sinkhorn_eps", sinkhorn_eps)

  kernel_cfg = pallas.Config(n, num_iters, float(sinkhorn_eps), float(pre_eps), float(post_mult),
                             float(rms_eps))
  if impl == "cpu" and x.dtype == jnp.float32:  # the pre-apply and the passed stream fused in
    return _coefficients_cpu(x, phi, alpha, bias, kernel_cfg, with_pre, pass_stream)
  return _with_input(_maps(x, phi, alpha, bias, impl, kernel_cfg, sinkhorn_grad), x, impl, with_pre,
                     pass_stream)


def _with_input(maps, x, impl: str, with_pre: bool, pass_stream: bool):
  """The maps, then ``u = mhc_pre(x, h_pre)`` and x as asked (where the pre-apply is not fused)."""
  if not with_pre:
    return maps + ((x,) if pass_stream else ())
  u, x = mhc_pre(x, maps[0], implementation=impl, pass_stream=True)
  return maps + (u,) + ((x,) if pass_stream else ())


def _maps(x, phi, alpha, bias, impl, cfg, sinkhorn_grad):
  """``(h_pre, h_post, h_res)`` of :func:`mhc_coefficients` for checked inputs."""
  n, c = x.shape[-2:]
  v = x.reshape(x.shape[:-2] + (n * c,))
  if impl == "pallas":
    return _coefficients_pallas(v, phi, alpha, bias, cfg)
  if impl == "cpu":  # a bf16/fp16 x: the kernels' u and passed x would be fp32
    return _coefficients_cpu(x, phi, alpha, bias, cfg, with_pre=False, pass_stream=False)
  cdt = _checks.compute_dtype(x.dtype, phi.dtype)
  scale_K = _column_scales(alpha.astype(cdt), n)
  logits = rms_projection(v, phi, cfg.rms_eps) * scale_K + bias.astype(cdt)
  h_pre = jax.nn.sigmoid(logits[..., :n]) + cfg.pre_eps
  h_post = cfg.post_mult * jax.nn.sigmoid(logits[..., n:2 * n])
  res_logits = logits[..., 2 * n:].reshape(logits.shape[:-1] + (n, n))
  if impl == "triton":
    return h_pre, h_post, triton_kernels.sinkhorn(res_logits, cfg.num_iters, cfg.sinkhorn_eps)
  return h_pre, h_post, sinkhorn_knopp(res_logits, num_iters=cfg.num_iters, eps=cfg.sinkhorn_eps,
                                       grad=sinkhorn_grad)


def _coefficients_cpu(x, phi, alpha, bias, cfg, with_pre: bool, pass_stream: bool):
  """The C++ coefficient kernel on x ``[..., N, C]``: the maps, then u, then x (as asked)."""
  n, c = cfg.n, x.shape[-1]
  f32 = lambda a: a.astype(jnp.float32)
  out = cpu.coefficients(f32(x.reshape(-1, n, c)), f32(phi), _column_scales(f32(alpha), n), f32(bias),
                         cfg, with_pre, pass_stream)
  return _kernel_outputs(out, x, with_pre, pass_stream)


def _kernel_outputs(out, x, with_pre: bool, pass_stream: bool):
  """A C++ coefficient kernel's outputs over flattened tokens, shaped like x: maps, u, x."""
  batch, c = x.shape[:-2], x.shape[-1]
  maps = tuple(m.reshape(batch + m.shape[1:]) for m in out[:3])
  u = (out[3].reshape(batch + (c,)),) if with_pre else ()
  return maps + u + ((out[-1].reshape(x.shape),) if pass_stream else ())


def _coefficients_pallas(v_XxP, phi, alpha, bias, cfg):
  """The fused coefficient kernel on ``[T, P]`` tokens; K padded to a power of two."""
  n, batch = cfg.n, v_XxP.shape[:-1]
  pad = pallas.padded_width(n) - num_coefficients(n)
  f32 = lambda a: a.astype(jnp.float32)
  h_pre, h_post, h_res = pallas.coefficients(
      v_XxP.reshape(-1, v_XxP.shape[-1]),
      jnp.pad(f32(phi), ((0, 0), (0, pad))),
      jnp.pad(_column_scales(f32(alpha), n), (0, pad)),
      jnp.pad(f32(bias), (0, pad)),
      cfg,
  )
  return h_pre.reshape(batch + (n,)), h_post.reshape(batch + (n,)), h_res.reshape(batch + (n, n))


# ----------------------------------------------------------------------- pre / post


# On XLA:CPU the fastest forms are (measured at T=4096, N=4, C=256, fp32):
#  * sums over the stream axis as N unrolled elementwise terms (one loop fusion; a
#    broadcast-multiply-reduce or a batched einsum over [..., N, C] is 3-5x slower);
#  * contractions over C as batched dots (an elementwise multiply fused into a reduce over
#    the minor axis runs ~6x slower than the dot).
# Dots use HIGHEST precision so GPUs keep them fp32 (no tf32).


def _mix(w_XxN, s_XxNxC):
  """``sum_i w[..., i] * s[..., i, :]`` -> ``[..., C]``, unrolled over the N streams."""
  return sum(w_XxN[..., i, None] * s_XxNxC[..., i, :] for i in range(s_XxNxC.shape[-2]))


def _mix_streams(m_XxNxM, s_XxNxC):
  """``out[..., k, :] = sum_i m[..., i, k] * s[..., i, :]`` -> ``[..., M, C]``, unrolled over N."""
  return sum(m_XxNxM[..., i, :, None] * s_XxNxC[..., i, None, :] for i in range(s_XxNxC.shape[-2]))


def _dot_c(a_XxNxC, b_XxC):
  """``sum_c a[..., i, c] * b[..., c]`` -> ``[..., N]``."""
  return jnp.einsum("...ic,...c->...i", a_XxNxC, b_XxC, precision="highest")


def _pre_xla(x_XxNxC, h_pre_XxN):
  cdt = _checks.compute_dtype(x_XxNxC.dtype, h_pre_XxN.dtype)
  return _mix(h_pre_XxN.astype(cdt), x_XxNxC.astype(cdt)).astype(x_XxNxC.dtype)


def _pre_bwd_xla(x_XxNxC, h_pre_XxN, g_XxC):
  cdt = _checks.compute_dtype(x_XxNxC.dtype, h_pre_XxN.dtype)
  g = g_XxC.astype(cdt)
  g_x = h_pre_XxN.astype(cdt)[..., None] * g[..., None, :]
  g_h = _dot_c(x_XxNxC.astype(cdt), g)
  return g_x.astype(x_XxNxC.dtype), g_h.astype(h_pre_XxN.dtype)


def _post_xla(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN):
  cdt = _checks.compute_dtype(x_XxNxC.dtype, h_res_XxNxN.dtype)
  # x'_k = sum_j h_res[k, j] x_j + h_post[k] y: mix with the transposed h_res.
  mixed = _mix_streams(jnp.swapaxes(h_res_XxNxN.astype(cdt), -1, -2), x_XxNxC.astype(cdt))
  out = mixed + h_post_XxN.astype(cdt)[..., None] * y_XxC.astype(cdt)[..., None, :]
  return out.astype(x_XxNxC.dtype)


def _post_bwd_xla(x_XxNxC, y_XxC, h_post_XxN, h_res_XxNxN, g_XxNxC):
  cdt = _checks.compute_dtype(x_XxNxC.dtype, h_res_XxNxN.dtype)
  g = g_XxNxC.astype(cdt)
  xf, yf = x_XxNxC.astype(cdt), y_XxC.astype(cdt)
  g_x = _mix_streams(h_res_XxNxN.astype(cdt), g)
  g_y = _mix(h_post_XxN.astype(cdt), g)
  g_h_post = _dot_c(g, yf)
  g_h_res = jnp.einsum("...ic,...jc->...ij", g, xf, precision="highest")
  return (
      g_x.astype(x_XxNxC.dtype),
      g_y.astype(y_XxC.dtype),
      g_h_post.astype(h_post_XxN.dtype),
      g_h_res.astype(h_res_XxNxN.dtype),
  )


_PRE_XLA = saving_inputs(_pre_xla, _pre_bwd_xla)
_PRE = {"xla": _PRE_XLA, "pallas": saving_inputs(pallas.pre_fwd, pallas.pre_bwd), "triton": _PRE_XLA}
_POST = {"xla": saving_inputs(_post_xla, _post_bwd_xla),
         "pallas": saving_inputs(pallas.post_fwd, pallas.post_bwd),
         "triton": triton_kernels.post}


def _in_fp32(op):
  """The C++ kernels take fp32: cast in, and back to the stream dtype (autodiff casts grads)."""
  return lambda x, *rest: op(*(a.astype(jnp.float32) for a in (x, *rest))).astype(x.dtype)


_PRE["cpu"], _POST["cpu"] = _in_fp32(cpu.pre), _in_fp32(cpu.post)


def _check_stream(x, implementation: str, sinkhorn_grad: str = "exact") -> tuple[str, int, int]:
  """Checks x ``[..., N, C]``; returns ``(implementation to run, N, C)``."""
  _checks.check_float("x", x)
  if x.ndim < 2:
    raise ValueError(f"x must have shape [..., N, C], got {x.shape}")
  impl = _concrete(implementation, x, sinkhorn_grad)
  if impl != "xla" and x.dtype == jnp.float64:
    raise ValueError(f"implementation={impl!r} computes in fp32; got a float64 x (use 'xla')")
  return impl, x.shape[-2], x.shape[-1]


def mhc_pre(x: jax.Array, h_pre: jax.Array, *, implementation: str = "auto",
            pass_stream: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
  """``u = sum_i h_pre[..., i] * x[..., i, :]``: x ``[..., N, C]``, h_pre ``[..., N]`` -> ``[..., C]``.

  ``pass_stream``: return ``(u, x)``, as in :func:`mhc_coefficients`.
  """
  x, h_pre = jnp.asarray(x), jnp.asarray(h_pre)
  impl, n, _ = _check_stream(x, implementation)
  _checks.check_float("h_pre", h_pre)
  _checks.check_shape("h_pre", h_pre, x.shape[:-1], "[..., N] matching x [..., N, C]")
  if pass_stream and impl == "cpu" and x.dtype == jnp.float32:
    return cpu.pre_passing(x, h_pre.astype(jnp.float32))
  u = _PRE[impl](x, h_pre)
  return (u, x) if pass_stream else u


def mhc_post(
    x: jax.Array,
    y: jax.Array,
    h_post: jax.Array,
    h_res: jax.Array,
    *,
    implementation: str = "auto",
) -> jax.Array:
  """``x' = H_res x + H_post^T y`` in paper layout -> ``[..., N, C]`` in x's dtype.

  x ``[..., N, C]``, y ``[..., C]`` (the sublayer output), h_post ``[..., N]``,
  h_res ``[..., N, N]`` with ``x'_i = sum_j h_res[i, j] x_j + h_post[i] y``.
  """
  x, y, h_post, h_res = map(jnp.asarray, (x, y, h_post, h_res))
  impl, n, _ = _check_stream(x, implementation)
  for name, a in (("y", y), ("h_post", h_post), ("h_res", h_res)):
    _checks.check_float(name, a)
  _checks.check_shape("y", y, x.shape[:-2] + x.shape[-1:], "[..., C] matching x [..., N, C]")
  _checks.check_shape("h_post", h_post, x.shape[:-1], "[..., N] matching x [..., N, C]")
  _checks.check_shape("h_res", h_res, x.shape[:-1] + (n,), "[..., N, N] matching x [..., N, C]")
  return _POST[impl](x, y, h_post, h_res)
