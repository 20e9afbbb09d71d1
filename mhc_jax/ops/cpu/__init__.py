"""Fused C++ kernels for XLA:CPU (``implementation="cpu"``), called through ``jax.ffi``.

Why: on a CPU, XLA runs each mHC op as several passes over the ``[T, N, C]`` stream
(a skinny GEMM, a separate sum of squares, batched 4x4 dots for dH_res, dozens of tiny
Sinkhorn loop fusions) and the train step paid ~25% over a residual model. The kernels in
``kernels.cc`` make one pass per op, split over XLA's own intra-op thread pool. The
coefficient kernel does ``v @ phi``, the RMS, the gates and all Sinkhorn iterations for
blocks of 16 tokens (one per vector lane); its backward keeps the block's Sinkhorn
iterates, and sums the phi gradient in 8 fixed token ranges that XLA adds up, so every
result is the same whatever the thread count. HC's kernel does the same for its maps (the
per-stream RMS projection, tanh and static parts) one token at a time. Both can compute the
pre-apply in the same pass (``with_pre``).

The source is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``;
C++20, ``-O3 -march=native``) into a cache directory (``$MHC_JAX_CACHE``, else
``~/.cache/mhc_jax``), keyed by the source, the jaxlib version, the compiler and the host
CPU, and loaded with ctypes. :func:`build_error` says why it is unusable (no compiler,
a failed build); ``implementation="auto"`` then falls back to XLA.

Kernels take fp32 and 1 <= N <= 8 (the ops in :mod:`mhc_jax.ops.mhc` cast other stream
dtypes to fp32 around them).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from mhc_jax.ops._vjp import saving_inputs

MAX_STREAMS = 8
GRAD_SLOTS = 8  # kGradSlots in kernels.cc: partial sums of the phi gradient
_SOURCE = pathlib.Path(__file__).with_name("kernels.cc")
_TARGETS = {
    "coef_fwd": "MhcCoefFwd",
    "coef_bwd": "MhcCoefBwd",
    "pre_fwd": "MhcPreFwd",
    "pre_bwd": "MhcPreBwd",
    "post_fwd": "MhcPostFwd",
    "post_bwd": "MhcPostBwd",
    "hc_fwd": "MhcHcFwd",
    "hc_bwd": "MhcHcBwd",
}
F32 = jnp.float32


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("MHC_JAX_CACHE", pathlib.Path.home() / ".cache" / "mhc_jax"))


def _cpu_signature() -> str:
  """What ``-march=native`` depends on, so a cache shared across machines stays correct."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("flags", "Features")):
        return line
  except OSError:
    pass
  return platform.processor() + platform.machine()


def build(directory: pathlib.Path, cxx: str) -> tuple[pathlib.Path | None, str | None]:
  """Compiles ``kernels.cc`` into ``directory`` unless built already: ``(library, None)`` or ``(None, why)``."""
  key = hashlib.sha256(b"\0".join([
      _SOURCE.read_bytes(), jaxlib.__version__.encode(), cxx.encode(), _cpu_signature().encode(),
  ])).hexdigest()[:16]
  library = directory / f"mhc_cpu_kernels-{key}.so"
  if library.exists():
    return library, None
  directory.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=directory) as tmp:
    built = pathlib.Path(tmp) / library.name
    command = [*shlex.split(cxx), "-O3", "-march=native", "-std=c++20", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(built)]
    try:
      proc = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:  # no such compiler
      return None, f"could not run the C++ compiler {cxx!r} ({e}); set CXX to a C++20 compiler"
    if proc.returncode != 0:
      return None, f"{cxx!r} failed to build {_SOURCE.name}:\n{proc.stderr[-2000:]}"
    os.replace(built, library)  # atomic: of concurrent builds, one file wins
  return library, None


@functools.cache
def _load() -> str | None:
  """Builds (once per cache key), loads and registers the kernels; an error message or None."""
  library, error = build(cache_dir(), os.environ.get("CXX", "c++"))
  if error is not None:
    return error
  try:
    lib = ctypes.cdll.LoadLibrary(str(library))
  except OSError as e:
    return f"loading {library} failed: {e}"
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f"mhc_jax_{name}", jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform="cpu")
  return None


def build_error() -> str | None:
  """None when the kernels are built and registered, else why not."""
  return _load()


def check_available() -> None:
  """Raises a RuntimeError that says why the kernels cannot be used (see :func:`build_error`)."""
  error = _load()
  if error is not None:
    raise RuntimeError(f"implementation='cpu' is unavailable: {error}")


def _call(name: str, out_shapes, *args, **attrs):
  check_available()
  return jax.ffi.ffi_call(f"mhc_jax_{name}", out_shapes, vmap_method="sequential")(*args, **attrs)


def _f32(shape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), F32)


# Every backward kernel can add a gradient that reaches x by another path (``g_in``):
# the ``passing`` variants return x itself as an extra output and fold its cotangent in,
# so XLA does not add the stream gradients of the three ops in separate passes.


def _accumulating(g_in):
  """(g_in or a 1-element placeholder, accumulate flag) for a backward kernel."""
  return (jnp.zeros((1,), F32), False) if g_in is None else (g_in, True)


def _passing(fwd, bwd):
  """A custom-VJP op ``(*fwd(x, ...), x)`` whose backward adds x's cotangent in-kernel."""
  op = jax.custom_vjp(lambda *args: (fwd(*args), args[0]))
  op.defvjp(lambda *args: ((fwd(*args), args[0]), args),
            lambda args, g: bwd(*args, g[0], g_in=g[1]))
  return op


# --------------------------------------------------------------------------- pre / post


def _pre_fwd(x, h):
  return _call("pre_fwd", _f32(x.shape[:-2] + x.shape[-1:]), x, h)


def _pre_bwd(x, h, g, g_in=None):
  g_in, accumulate = _accumulating(g_in)
  return tuple(_call("pre_bwd", (_f32(x.shape), _f32(h.shape)), x, h, g, g_in, accumulate=accumulate))


def _post_fwd(x, y, h_post, h_res):
  return _call("post_fwd", _f32(x.shape), x, y, h_post, h_res)


def _post_bwd(x, y, h_post, h_res, g):
  shapes = tuple(_f32(a.shape) for a in (x, y, h_post, h_res))
  return tuple(_call("post_bwd", shapes, x, y, h_post, h_res, g))


pre = saving_inputs(_pre_fwd, _pre_bwd)
pre_passing = _passing(_pre_fwd, _pre_bwd)
post = saving_inputs(_post_fwd, _post_bwd)


# ------------------------------------------------------------------------- coefficients


def _attrs(cfg):
  f = lambda a: np.float32(a)  # FFI attributes are typed: float32 on the C++ side
  return dict(iters=int(cfg.num_iters), sinkhorn_eps=f(cfg.sinkhorn_eps), pre_eps=f(cfg.pre_eps),
              post_mult=f(cfg.post_mult), rms_eps=f(cfg.rms_eps))


def _padded(k: int) -> int:
  """The forward kernels' projection width: K rounded up to whole 16-float vectors."""
  return -(-k // 16) * 16


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def coefficients(x_TxNxC, phi_PxK, scale_K, bias_K, cfg, with_pre: bool = False, passing: bool = False):
  """``(h_pre [T, N], h_post [T, N], h_res [T, N, N])`` from fp32 x ``[T, N, C]``.

  Then ``u = sum_i h_pre[i] x_i`` ``[T, C]`` if ``with_pre`` (the pre-apply in the same pass,
  its VJP in the backward's), then x if ``passing``. ``scale_K`` holds the per-column gates
  (alpha_pre/post/res), ``cfg`` is a :class:`mhc_jax.ops.pallas.Config`. The VJP is exact
  (the Sinkhorn's too).
  """
  return _coef_fwd(x_TxNxC, phi_PxK, scale_K, bias_K, cfg, with_pre, passing)[0]


def _coef_fwd(x, phi_PxK, scale_K, bias_K, cfg, with_pre, passing):
  t, n, c = x.shape
  k = phi_PxK.shape[1]
  h_pre, h_post, h_res, proj, inv_r, u = _call(
      "coef_fwd", (_f32((t, n)), _f32((t, n)), _f32((t, n, n)), _f32((t, k)), _f32((t,)),
                   _f32((t, c) if with_pre else (1,))),
      x, jnp.pad(phi_PxK, ((0, 0), (0, _padded(k) - k))), scale_K, bias_K, with_pre=with_pre,
      **_attrs(cfg))
  outs = (h_pre, h_post, h_res) + ((u,) if with_pre else ()) + ((x,) if passing else ())
  return outs, (x, jnp.swapaxes(phi_PxK, 0, 1), scale_K, bias_K, proj, inv_r)


def _coef_bwd(cfg, with_pre, passing, res, grads):
  x, phi_KxP, scale_K, bias_K, proj_TxK, inv_r_T = res
  g_pre, g_post, g_res = grads[:3]
  g_u = grads[3] if with_pre else jnp.zeros((1,), F32)
  g_in, accumulate = _accumulating(grads[-1] if passing else None)
  t, k = proj_TxK.shape
  p = phi_KxP.shape[1]
  g_x, g_logits, g_phi_parts = _call(
      "coef_bwd", (_f32(x.shape), _f32((t, k)), _f32((GRAD_SLOTS, p, _padded(k)))),
      x, phi_KxP, scale_K, bias_K, proj_TxK, inv_r_T, g_pre, g_post, g_res, g_u, g_in,
      with_pre=with_pre, accumulate=accumulate, **_attrs(cfg))
  # logits = proj * inv_r * scale + bias, proj = v @ phi.
  g_scale = jnp.sum(g_logits * proj_TxK * inv_r_T[:, None], axis=0)
  g_phi = jnp.sum(g_phi_parts, axis=0)[:, :k]
  return g_x, g_phi, g_scale, jnp.sum(g_logits, axis=0)


coefficients.defvjp(_coef_fwd, _coef_bwd)


# ----------------------------------------------------------------------- HC coefficients


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def hc_coefficients(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, eps,
                    with_pre: bool = False, passing: bool = False):
  """HC's ``(h_pre [T, N], h_post [T, N], h_res [T, N, N])`` from fp32 x ``[T, N, C]``.

  The maps of :func:`mhc_jax.ops.hc_coefficients` (dynamic HC, w ``[C, N + 2]``), then u
  if ``with_pre``, then x if ``passing``, as in :func:`coefficients`.
  """
  return _hc_fwd(x_TxNxC, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, eps, with_pre, passing)[0]


def _hc_fwd(x, w_CxK, a_pre, b_post, a_res, s_alpha, s_beta, eps, with_pre, passing):
  t, n, c = x.shape
  w_KxC, gates = jnp.swapaxes(w_CxK, 0, 1), jnp.stack([s_alpha, s_beta])
  h_pre, h_post, h_res, u, z, y, r = _call(
      "hc_fwd", (_f32((t, n)), _f32((t, n)), _f32((t, n, n)), _f32((t, c) if with_pre else (1,)),
                 _f32((t, n, n + 2)), _f32((t, n, n + 2)), _f32((t, n))),
      x, w_KxC, gates, a_pre, b_post, a_res, with_pre=with_pre, eps=np.float32(eps))
  outs = (h_pre, h_post, h_res) + ((u,) if with_pre else ()) + ((x,) if passing else ())
  return outs, (x, w_KxC, gates, h_pre, z, y, r)


def _hc_bwd(eps, with_pre, passing, res, grads):
  del eps
  x, w_KxC, gates, h_pre, z_TxNxK, y, r = res
  g_pre, g_post, g_res = grads[:3]
  g_u = grads[3] if with_pre else jnp.zeros((1,), F32)
  g_in, accumulate = _accumulating(grads[-1] if passing else None)
  g_x, g_w_parts, g_pre_all = _call(
      "hc_bwd", (_f32(x.shape), _f32((GRAD_SLOTS,) + w_KxC.shape), _f32(h_pre.shape)),
      x, w_KxC, gates, h_pre, z_TxNxK, y, r, g_pre, g_post, g_res, g_u, g_in,
      with_pre=with_pre, accumulate=accumulate)
  # h_pre = s_alpha z[:, :, 0] + a_pre, h_post = s_beta z[:, :, 1] + b_post,
  # h_res^T = s_alpha z[:, :, 2:] + a_res.
  g_res_t = jnp.swapaxes(g_res, 1, 2)
  g_s_alpha = jnp.sum(g_pre_all * z_TxNxK[..., 0]) + jnp.sum(g_res_t * z_TxNxK[..., 2:])
  g_s_beta = jnp.sum(g_post * z_TxNxK[..., 1])
  return (g_x, jnp.swapaxes(jnp.sum(g_w_parts, axis=0), 0, 1), jnp.sum(g_pre_all, axis=0),
          jnp.sum(g_post, axis=0), jnp.sum(g_res_t, axis=0), g_s_alpha, g_s_beta)


hc_coefficients.defvjp(_hc_fwd, _hc_bwd)
