"""mHC-lite (docs/math.md §9): H_res as a softmax-weighted mixture of the n! permutation matrices.

  mhc_lite_coefficients(x, phi, alpha, bias)    x -> (H_pre, H_post, H_res), no Sinkhorn
  mhc_lite_connection_pre(x, phi, alpha, bias)  -> (u, ctx) for ``connection_post(F(u), ctx)``

phi has ``K = 2N + N!`` columns ``[pre (N) | post (N) | one logit per permutation (N!)]``;
``H_res = sum_k softmax(logits)_k P_k`` is doubly stochastic to rounding by construction, and its
gradient is autodiff through the softmax. The maps are XLA's ops (``"xla"``); pre and post run on
the backend that ``implementation`` selects, as for mHC.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mhc_jax import validation
from mhc_jax.ops import connection, dispatch
from mhc_jax.ops.streams import Context, rms_projection

MAX_STREAMS = 5
"""n! grows fast: 24 permutations at n = 4, 120 at n = 5, 720 at n = 6 (refused)."""


def check_streams(n: int, name: str = "num_streams") -> None:
  """Refuses n outside [1, MAX_STREAMS] for mHC-lite, naming the value and the reason."""
  validation.check_int(name, n, 1)
  if n > MAX_STREAMS:
    raise ValueError(f"{name}={n}: mHC-lite mixes all {n}! = {math.factorial(n)} permutation "
                     f"matrices; it is capped at n <= {MAX_STREAMS} ({math.factorial(MAX_STREAMS)}). "
                     "Use the Sinkhorn projection for more streams")


@functools.cache
def permutation_matrices(n: int) -> np.ndarray:
  """The n! permutation matrices ``[n!, n, n]`` (float32), the identity first:
  ``P_k[i, perm_k[i]] = 1`` for the k-th permutation of ``itertools.permutations(range(n))``."""
  check_streams(n, "n")
  perms = np.array(list(itertools.permutations(range(n))))
  mats = np.zeros((len(perms), n, n), np.float32)
  mats[np.arange(len(perms))[:, None], np.arange(n)[None, :], perms] = 1.0
  return mats


def num_lite_coefficients(n: int) -> int:
  """K = 2N + N!: the columns of mHC-lite's phi."""
  return 2 * n + math.factorial(n)


def _checked(x, phi, alpha, bias, pre_eps, post_mult, rms_eps):
  x = connection.check_stream(x)
  phi, alpha, bias = map(jnp.asarray, (phi, alpha, bias))
  n, c = x.shape[-2:]
  check_streams(n, "N (x's stream axis)")
  k = num_lite_coefficients(n)
  for name, a in (("phi", phi), ("alpha", alpha), ("bias", bias)):
    validation.check_float(name, a)
  validation.check_shape("phi", phi, (n * c, k), f"[N*C, 2N+N!] for N={n}, C={c}")
  validation.check_shape("alpha", alpha, (3,), "(alpha_pre, alpha_post, alpha_res)")
  validation.check_shape("bias", bias, (k,), f"[2N+N!] for N={n}")
  for name, value in (("pre_eps", pre_eps), ("post_mult", post_mult), ("rms_eps", rms_eps)):
    validation.check_nonnegative(name, value)
  return connection.tokens(x, 2), x.shape[:-2], (phi, alpha, bias)


def _maps(x_TxNxC, phi, alpha, bias, pre_eps, post_mult, rms_eps):
  n = x_TxNxC.shape[1]
  cdt = validation.compute_dtype(x_TxNxC.dtype, phi.dtype)
  alpha = alpha.astype(cdt)
  scales = jnp.concatenate([jnp.broadcast_to(alpha[i], (size,))
                            for i, size in enumerate((n, n, math.factorial(n)))])
  logits = rms_projection(x_TxNxC, phi, rms_eps, 2) * scales + bias.astype(cdt)
  h_pre = jax.nn.sigmoid(logits[:, :n]) + pre_eps
  h_post = post_mult * jax.nn.sigmoid(logits[:, n:2 * n])
  weights = jax.nn.softmax(logits[:, 2 * n:], axis=-1)
  h_res = jnp.einsum("tk,kij->tij", weights, jnp.asarray(permutation_matrices(n), cdt),
                     precision="highest")
  return h_pre, h_post, h_res


def mhc_lite_coefficients(x: jax.Array, phi: jax.Array, alpha: jax.Array, bias: jax.Array, *,
                          pre_eps: float = 1e-6, post_mult: float = 2.0,
                          rms_eps: float = 1e-6) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-token mHC-lite maps: ``(h_pre [..., N], h_post [..., N], h_res [..., N, N])`` in fp32.

  x ``[..., N, C]`` (N <= ``MAX_STREAMS``), phi ``[N*C, 2N+N!]``, alpha ``[3]``, bias ``[2N+N!]``;
  H_pre and H_post as mHC's (docs/math.md §2), H_res the mixture of §9.
  """
  x_TxNxC, batch, params = _checked(x, phi, alpha, bias, pre_eps, post_mult, rms_eps)
  xla = dispatch.backend("xla")
  maps = dispatch.run(xla, lambda x, *p: _maps(x, *p, pre_eps, post_mult, rms_eps), x_TxNxC,
                      (x_TxNxC,), params)
  return connection.unflatten(maps, batch)


def mhc_lite_connection_pre(x: jax.Array, phi: jax.Array, alpha: jax.Array, bias: jax.Array, *,
                            pre_eps: float = 1e-6, post_mult: float = 2.0, rms_eps: float = 1e-6,
                            implementation: str = "auto") -> tuple[jax.Array, Context]:
  """The first half of an mHC-lite connection: ``(u [..., C], ctx)``, ``u = sum_i H_pre[i] x_i``;
  ``implementation`` picks the backend of pre and post (the maps are XLA's)."""
  x_TxNxC, batch, params = _checked(x, phi, alpha, bias, pre_eps, post_mult, rms_eps)
  backend = dispatch.select(implementation, ("pre", "post"), x_TxNxC)
  xla = dispatch.backend("xla")
  maps = dispatch.run(xla, lambda x, *p: _maps(x, *p, pre_eps, post_mult, rms_eps), x_TxNxC,
                      (x_TxNxC,), params)
  return connection.from_maps(backend, x_TxNxC, maps, batch)
