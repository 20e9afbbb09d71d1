"""The stream ops that HC and mHC share, and the two halves of a fused connection.

  mhc_pre(x, h_pre)                u = sum_i H_pre[i] x_i            the sublayer input
  mhc_post(x, y, h_post, h_res)    x' = H_res x + H_post^T y         the merged stream update
  connection_post(y, ctx)          x' from the Context that ``mhc_connection_pre`` or
                                   ``hc_connection_pre`` returned with u

Ops check their inputs here (each error names the bad value), flatten the leading batch
axes into T tokens, let :mod:`mhc_jax.ops.dispatch` pick the backend, and shape the results
back. The math runs in fp32 (fp64 for fp64 inputs) whatever the stream dtype; u and x' come
back in the stream dtype (docs/math.md §5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc_jax import validation
from mhc_jax.ops import dispatch
from mhc_jax.ops.streams import Context

CONNECTION_OPS = ("pre", "post")  # plus the maps op of HC or mHC


def check_stream(x) -> jax.Array:
  """x ``[..., N, C]`` as a floating array."""
  x = jnp.asarray(x)
  validation.check_float("x", x)
  if x.ndim < 2:
    raise ValueError(f"x must have shape [..., N, C], got {x.shape}")
  return x


def tokens(a, trailing: int):
  """``a`` with its leading axes flattened into one token axis, keeping ``trailing`` axes."""
  return a.reshape((-1,) + a.shape[a.ndim - trailing:])


def unflatten(maps, batch: tuple[int, ...]):
  """Per-token arrays ``[T, ...]`` back to ``batch + (...)``."""
  return tuple(m.reshape(batch + m.shape[1:]) for m in maps)


def first_half(backend, kind: str, x_TxNxC, shared: tuple, static: tuple, batch: tuple[int, ...]):
  """``(u, Context)`` of HC's or mHC's (``kind``) first half on ``backend``, shaped back to ``batch``.

  The backend's fused ``<kind>_connection_pre`` where it has one, else its maps, then ``pre``;
  ``shared`` are the parameter arrays, ``static`` the trailing Python arguments.
  """
  def over_tokens(x, *params):
    fused = getattr(backend, f"{kind}_connection_pre", None)
    if fused is not None:
      return fused(x, *params, *static)
    maps = getattr(backend, f"{kind}_maps")(x, *params, *static)
    return backend.pre(x, maps[0]), Context(x, *maps, backend.NAME)

  return batched(*dispatch.run(backend, over_tokens, x_TxNxC, (x_TxNxC,), shared), batch)


def from_maps(backend, x_TxNxC, maps, batch: tuple[int, ...]):
  """``(u, Context)`` from maps already computed: the backend's pre-apply, shaped back to ``batch``."""
  u = dispatch.run(backend, backend.pre, x_TxNxC, (x_TxNxC, maps[0]))
  return batched(u, Context(x_TxNxC, *maps, backend.NAME), batch)


def batched(u_TxC, ctx: Context, batch: tuple[int, ...]):
  """A backend's ``(u, Context)`` over tokens, shaped back to ``batch``."""
  x, h_pre, h_post, h_res = unflatten((ctx.x, ctx.h_pre, ctx.h_post, ctx.h_res), batch)
  return u_TxC.reshape(batch + u_TxC.shape[1:]), Context(x, h_pre, h_post, h_res, ctx.implementation)


def mhc_pre(x: jax.Array, h_pre: jax.Array, *, implementation: str = "auto") -> jax.Array:
  """``u = sum_i h_pre[..., i] * x[..., i, :]``: x ``[..., N, C]``, h_pre ``[..., N]`` -> ``[..., C]``."""
  x, h_pre = check_stream(x), jnp.asarray(h_pre)
  validation.check_float("h_pre", h_pre)
  validation.check_shape("h_pre", h_pre, x.shape[:-1], "[..., N] matching x [..., N, C]")
  x_TxNxC = tokens(x, 2)
  backend = dispatch.select(implementation, ("pre",), x_TxNxC)
  u = dispatch.run(backend, backend.pre, x_TxNxC, (x_TxNxC, tokens(h_pre, 1)))
  return u.reshape(x.shape[:-2] + x.shape[-1:])


def mhc_post(x: jax.Array, y: jax.Array, h_post: jax.Array, h_res: jax.Array, *,
             implementation: str = "auto") -> jax.Array:
  """``x' = H_res x + H_post^T y`` in paper layout -> ``[..., N, C]`` in x's dtype.

  x ``[..., N, C]``, y ``[..., C]`` (the sublayer output), h_post ``[..., N]``,
  h_res ``[..., N, N]`` with ``x'_i = sum_j h_res[i, j] x_j + h_post[i] y``.
  """
  x = check_stream(x)
  y, h_post, h_res = map(jnp.asarray, (y, h_post, h_res))
  n = x.shape[-2]
  for name, a in (("y", y), ("h_post", h_post), ("h_res", h_res)):
    validation.check_float(name, a)
  validation.check_shape("y", y, x.shape[:-2] + x.shape[-1:], "[..., C] matching x [..., N, C]")
  validation.check_shape("h_post", h_post, x.shape[:-1], "[..., N] matching x [..., N, C]")
  validation.check_shape("h_res", h_res, x.shape[:-1] + (n,), "[..., N, N] matching x [..., N, C]")
  x_TxNxC = tokens(x, 2)
  backend = dispatch.select(implementation, ("post",), x_TxNxC)
  per_token = (x_TxNxC, tokens(y, 1), tokens(h_post, 1), tokens(h_res, 2))
  return dispatch.run(backend, backend.post, x_TxNxC, per_token).reshape(x.shape)


def connection_post(y: jax.Array, ctx: Context) -> jax.Array:
  """The second half of a connection: ``x' = H_res x + H_post^T y`` from ``(u, ctx) = *_connection_pre(x)``.

  y ``[..., C]`` is the sublayer's output for u (cast to the stream dtype); runs on the
  backend that made ``ctx``.
  """
  if not isinstance(ctx, Context):
    raise TypeError(f"ctx must be the Context returned by a connection_pre op, got {type(ctx).__name__}")
  x = ctx.x
  y = jnp.asarray(y)
  validation.check_shape("y", y, x.shape[:-2] + x.shape[-1:], "[..., C] matching the stream [..., N, C]")
  backend = dispatch.backend(ctx.implementation)
  x_TxNxC = tokens(x, 2)
  per_token = (x_TxNxC, tokens(y.astype(x.dtype), 1), tokens(ctx.h_post, 1), tokens(ctx.h_res, 2))
  return dispatch.run(backend, backend.post, x_TxNxC, per_token).reshape(x.shape)
