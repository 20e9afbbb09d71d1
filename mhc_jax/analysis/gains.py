"""Amax gains of residual maps and of their composites across depth (docs/math.md §7).

For ``M`` in ``R^{N x N}`` (paper layout, ``M[i, j]``: how much output stream i reads from input
stream j):

  gain_forward(M)  = max_i |sum_j M[i, j]|    the largest |row sum|
  gain_backward(M) = max_j |sum_i M[i, j]|    the largest |column sum|

Arrays of maps carry a leading sublayer axis ``S`` in depth order (sublayer 0 is applied first),
then any token axes, then ``N x N``: ``h_res_SxXxNxN``. The composites along the residual path are

  forward  P_l = H_l H_{l-1} ... H_0     the map from the model's input to sublayer l's output
  backward Q_l = H_{S-1} ... H_{l+1} H_l  the map from sublayer l's input to the last output

(the later sublayer always multiplies from the left), each per token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

AVERAGES = ("tokens", "matrices")


def _maps(h_res) -> jax.Array:
  h = jnp.asarray(h_res)
  if h.ndim < 3 or h.shape[-1] != h.shape[-2]:
    raise ValueError(f"expected maps of shape [S, ..., N, N] (a sublayer axis, then any token axes, "
                     f"then square matrices), got {h.shape}")
  return h.astype(jnp.promote_types(h.dtype, jnp.float32))  # bf16 and ints to fp32, fp64 kept


def gain_forward(m) -> jax.Array:
  """``max_i |sum_j m[..., i, j]|``: the largest absolute row sum of each trailing ``N x N`` matrix."""
  return jnp.max(jnp.abs(jnp.sum(m, axis=-1)), axis=-1)


def gain_backward(m) -> jax.Array:
  """``max_j |sum_i m[..., i, j]|``: the largest absolute column sum of each trailing ``N x N`` matrix."""
  return jnp.max(jnp.abs(jnp.sum(m, axis=-2)), axis=-1)


def _matmul(a, b):
  return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


@jax.jit
def composites(h_res_SxXxNxN) -> tuple[jax.Array, jax.Array]:
  """Forward and backward composites ``(P, Q)`` of maps in depth order, per token.

  ``P[l] = H[l] @ H[l-1] @ ... @ H[0]`` and ``Q[l] = H[S-1] @ ... @ H[l+1] @ H[l]``: the later
  sublayer multiplies from the left, since the stream state is updated as ``x' = H x``. So
  ``P[0] = H[0]``, ``Q[S-1] = H[S-1]`` and ``P[S-1] = Q[0]`` is the whole residual path. Both have
  the input's shape ``[S, ..., N, N]``; they are computed with ``lax.associative_scan``.
  """
  h = _maps(h_res_SxXxNxN)
  # Forward: the scan combines (earlier prefix a, later element b) into b @ a.
  p = lax.associative_scan(lambda a, b: _matmul(b, a), h)
  # Backward, reverse=True: the scan runs from the last sublayer down, so a holds the later
  # sublayers' product and b the earlier element; their composite is a @ b.
  q = lax.associative_scan(_matmul, h, reverse=True)
  return p, q


@functools.partial(jax.jit, static_argnames="average")
def amax_gains(h_res_SxXxNxN, average: str = "tokens") -> dict[str, jax.Array]:
  """Per-sublayer Amax gains of the single maps and of their composites, forward and backward.

  Args:
    h_res_SxXxNxN: ``[S, ..., N, N]`` maps in depth order (e.g. ``capture(...)["h_res"]``); the
      axes between the first and the last two are token axes (there may be none).
    average: how tokens are combined.
      * ``"tokens"``: each token's gains (of its own maps and its own composites), averaged over
        all token axes.
      * ``"matrices"``: the gains of the token-averaged maps ``mean_t H_l`` and of the composites of
        those averages (as in the mHC paper's Fig. 8). Gains are convex, so this is never above
        the ``"tokens"`` value for the single maps; composites may differ either way.

  Returns:
    ``single_forward``, ``single_backward`` (``gain_forward(H_l)``, ``gain_backward(H_l)``),
    ``composite_forward`` (``gain_forward(P_l)``) and ``composite_backward``
    (``gain_backward(Q_l)``), each of shape ``[S]``; and the scalars ``max_composite_forward`` and
    ``max_composite_backward``, their maxima over sublayers.
  """
  if average not in AVERAGES:
    raise ValueError(f"average={average!r}: expected one of {AVERAGES}")
  h = _maps(h_res_SxXxNxN)
  token_axes = tuple(range(1, h.ndim - 2))
  if average == "matrices":
    h = jnp.mean(h, axis=token_axes)
    token_axes = ()
  p, q = composites(h)
  mean = lambda g: jnp.mean(g, axis=token_axes)
  gains = {
      "single_forward": mean(gain_forward(h)),
      "single_backward": mean(gain_backward(h)),
      "composite_forward": mean(gain_forward(p)),
      "composite_backward": mean(gain_backward(q)),
  }
  gains["max_composite_forward"] = jnp.max(gains["composite_forward"])
  gains["max_composite_backward"] = jnp.max(gains["composite_backward"])
  return gains


@jax.jit
def doubly_stochastic_error(h_res_SxXxNxN) -> dict[str, jax.Array]:
  """How far each sublayer's maps are from doubly stochastic, over all of its tokens.

  Returns ``[S]`` arrays: ``row_error`` = max over tokens and rows of ``|row sum - 1|``,
  ``column_error`` = the same for column sums, and ``min_entry`` = the smallest entry (>= 0 for a
  doubly stochastic map; HC's maps may go negative).
  """
  h = _maps(h_res_SxXxNxN)
  per_sublayer = lambda a: jnp.max(a.reshape(a.shape[0], -1), axis=1)
  return {
      "row_error": per_sublayer(jnp.abs(jnp.sum(h, axis=-1) - 1)),
      "column_error": per_sublayer(jnp.abs(jnp.sum(h, axis=-2) - 1)),
      "min_entry": -per_sublayer(-h),
  }
