"""Flax NNX connection modules: Residual, HyperConnection (HC), ManifoldHyperConnection (mHC).

Each wraps any sublayer ``F`` (its own pre-norm plus its branch, e.g. RMSNorm + attention)
and applies one residual-stream update. Calls pass extra arguments through to ``F``:

    conn = ManifoldHyperConnection(nnx.Sequential(norm, mlp), num_streams=4, features=C, rngs=rngs)
    x_BxLxNxC = conn(x_BxLxNxC)            # x' = H_res x + H_post^T F(H_pre x)

Parameters are fp32; the stream state keeps its own dtype (bf16 is fine). With
``num_streams == 1`` HC and mHC hold no parameters and compute a plain residual,
``x' = x + F(x)``. Set ``capture_maps=True`` (e.g. ``model.set_attributes(capture_maps=True)``)
to keep the per-token ``h_pre``/``h_post``/``h_res`` of the last call as ``nnx.Intermediate``
state on the module (read them with ``nnx.pop(module, nnx.Intermediate)``).
``fixed_maps`` (a subset of ``("pre", "post", "res")``) replaces those maps by fixed ones for
the ablation of docs/math.md §4: H_pre = 1/N (u = the mean of the streams), H_post = 1, H_res = I.

Every parameter carries logical axis names as metadata (``logical_axes``; the names are listed
in :mod:`mhc_jax.parallel.rules`), which the sharding rule sets map to mesh axes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mhc_jax import ops, validation
from mhc_jax.ops.lite import check_streams as check_lite_streams

MHC_INITS = ("paper", "identity")
RES_PROJECTIONS = ("sinkhorn", "permutations")
FIXABLE_MAPS = ("pre", "post", "res")
"""The maps that ``fixed_maps`` can fix (the ablation of docs/math.md §4)."""
BRANCH_OUTPUT = "connection_branch"
"""``jax.checkpoint`` name of every HC/mHC sublayer output ``y = F(u)`` (save it by this name)."""


def check_fixed_maps(fixed_maps, *, owner: str = "") -> tuple[str, ...]:
  """``fixed_maps`` as a tuple: each entry one of :data:`FIXABLE_MAPS`, none twice; errors name the field."""
  name = f"{owner}.fixed_maps" if owner else "fixed_maps"
  if isinstance(fixed_maps, str) or not isinstance(fixed_maps, (tuple, list)):
    raise ValueError(f"{name}={fixed_maps!r}: must be a tuple of names from {FIXABLE_MAPS}")
  for m in fixed_maps:
    if m not in FIXABLE_MAPS:
      raise ValueError(f"{name}={tuple(fixed_maps)!r}: {m!r} is not a map; "
                       f"each entry must be one of {FIXABLE_MAPS}")
  if len(set(fixed_maps)) != len(fixed_maps):
    raise ValueError(f"{name}={tuple(fixed_maps)!r}: names a map twice")
  return tuple(fixed_maps)


def fix_maps(ctx: ops.Context, fixed_maps: tuple[str, ...]) -> ops.Context:
  """``ctx`` with the maps named in ``fixed_maps`` replaced: H_pre = 1/N, H_post = 1, H_res = I."""
  n = ctx.h_pre.shape[-1]
  fixed = {"pre": jnp.full_like(ctx.h_pre, 1.0 / n), "post": jnp.ones_like(ctx.h_post),
           "res": jnp.broadcast_to(jnp.eye(n, dtype=ctx.h_res.dtype), ctx.h_res.shape)}
  return dataclasses.replace(ctx, **{f"h_{m}": fixed[m] for m in fixed_maps})


class HCStatic(nnx.Param):
  """HC's static parts (a_pre, b_post, a_res): trained, but excluded from weight decay."""


class Residual(nnx.Module):
  """Pre-Norm residual, ``x' = x + F(x)``: the baseline with the same interface."""

  def __init__(self, sublayer: Callable):
    self.sublayer = sublayer

  def __call__(self, x, *args, **kwargs):
    return x + self.sublayer(x, *args, **kwargs).astype(x.dtype)


class _StreamConnection(nnx.Module):
  """Shared update for HC and mHC; subclasses provide ``pre(x) -> (u, ctx)`` (``ops.*_connection_pre``).

  ``fixed_maps`` (the ablation, docs/math.md §4) replaces the maps it names after ``pre``:
  H_pre = 1/N for every stream (then u is recomputed: the mean of the streams), H_post = 1,
  H_res = I. The others are computed as usual. The parameters that feed only a fixed map
  (e.g. HC's a_pre and the w_pre column of w; mHC's pre columns of phi, pre bias and
  alpha_pre) still exist but get zero gradient. ``capture_maps`` records the maps used.
  """

  def __init__(self, sublayer: Callable, num_streams: int, features: int,
               implementation: str, capture_maps: bool, fixed_maps: tuple[str, ...] = ()):
    validation.check_int("num_streams", num_streams, 1)
    validation.check_int("features", features, 1)
    ops.check_implementation(implementation)
    self.sublayer = sublayer
    self.num_streams = num_streams
    self.features = features
    self.implementation = implementation
    self.capture_maps = capture_maps
    self.fixed_maps = check_fixed_maps(fixed_maps)

  def pre(self, x_XxNxC) -> tuple[jax.Array, ops.Context]:
    """``(u, ctx)``: the sublayer input ``u = H_pre x`` and the maps, for ``ops.connection_post``."""
    raise NotImplementedError

  def __call__(self, x_XxNxC, *args, **kwargs):
    n, c = self.num_streams, self.features
    if x_XxNxC.ndim < 2 or x_XxNxC.shape[-2:] != (n, c):
      raise ValueError(f"{type(self).__name__} expects x of shape [..., {n}, {c}] "
                       f"(num_streams, features), got {x_XxNxC.shape}")
    if n == 1:
      return x_XxNxC + self.sublayer(x_XxNxC[..., 0, :], *args, **kwargs)[..., None, :].astype(x_XxNxC.dtype)
    u_XxC, ctx = self.pre(x_XxNxC)                  # u = H_pre x
    if self.fixed_maps:                             # the ablation: some maps fixed
      ctx = fix_maps(ctx, self.fixed_maps)
      if "pre" in self.fixed_maps:
        u_XxC = ops.mhc_pre(x_XxNxC, ctx.h_pre, implementation=self.implementation)
    # y = F(u), named so that a recomputing caller keeps it whatever F's last op is.
    y_XxC = checkpoint_name(self.sublayer(u_XxC, *args, **kwargs), BRANCH_OUTPUT)
    if self.capture_maps:
      self.h_pre, self.h_post, self.h_res = (nnx.Intermediate(m) for m in (ctx.h_pre, ctx.h_post, ctx.h_res))
    return ops.connection_post(y_XxC, ctx)          # x' = H_res x + H_post^T y


class HyperConnection(_StreamConnection):
  """Hyper-Connections (docs/math.md §4): dynamic by default, static with ``dynamic=False``.

  At init (w = 0, a_pre = e_{k mod N}, b_post = 1, a_res = I) it computes exactly what a
  Pre-Norm residual network computes; the one-hot read is what breaks stream symmetry.
  ``fixed_maps`` fixes some of the maps for the mHC paper's ablation (see ``_StreamConnection``).
  """

  def __init__(self, sublayer: Callable, *, num_streams: int, features: int, layer_index=0,
               dynamic: bool = True, gate_init: float = 0.01, implementation: str = "auto",
               capture_maps: bool = False, fixed_maps: tuple[str, ...] = (),
               rngs: nnx.Rngs | None = None):
    del rngs  # HC's init is deterministic; accepted for a uniform constructor.
    super().__init__(sublayer, num_streams, features, implementation, capture_maps, fixed_maps)
    self.dynamic = dynamic
    if num_streams == 1:
      return
    a_pre, b_post, a_res = ops.hc_static_init(num_streams, layer_index)
    self.a_pre, self.b_post = HCStatic(a_pre, logical_axes=(None,)), HCStatic(b_post, logical_axes=(None,))
    self.a_res = HCStatic(a_res, logical_axes=(None, None))
    if dynamic:
      self.w = nnx.Param(jnp.zeros((features, num_streams + 2), jnp.float32), logical_axes=("embed", None))
      self.s_alpha = nnx.Param(jnp.asarray(gate_init, jnp.float32), logical_axes=())
      self.s_beta = nnx.Param(jnp.asarray(gate_init, jnp.float32), logical_axes=())

  def pre(self, x_XxNxC):
    static = (self.a_pre[...], self.b_post[...], self.a_res[...])
    dynamic = (self.w[...], self.s_alpha[...], self.s_beta[...]) if self.dynamic else ()
    return ops.hc_connection_pre(x_XxNxC, *static, *dynamic, implementation=self.implementation)


class ManifoldHyperConnection(_StreamConnection):
  """mHC (docs/math.md §2): H_res doubly stochastic, H_pre and H_post non-negative.

  ``res_projection`` picks how H_res reaches the doubly stochastic matrices:
    * ``"sinkhorn"``: Sinkhorn-Knopp on N*N logits (the paper's mHC);
    * ``"permutations"``: mHC-lite (docs/math.md §9), a softmax mixture of the N! permutation
      matrices, exact with no iterations; N <= 5 (``ops.lite.MAX_STREAMS``). The Sinkhorn
      arguments are then unused.

  Init presets:
    * ``"paper"``: bias = 0, alpha = ``alpha_init`` (0.01), phi ~ N(0, 1/(N*C)). Within O(alpha)
      of a Pre-Norm residual; the random phi breaks the symmetry between the identical
      streams (with phi = 0 it is exactly a Pre-Norm residual, and stays one).
    * ``"identity"``: as "paper", plus a diagonal res bias (H_res ~ I) and a one-hot pre bias
      reading stream ``layer_index mod N`` (``identity_logit`` sets how sharp both are; with
      ``"permutations"`` the res bias is ``identity_logit`` on the identity permutation).

  ``fixed_maps`` fixes some of the maps, as for HC (see ``_StreamConnection``).
  """

  def __init__(self, sublayer: Callable, *, num_streams: int, features: int, layer_index=0,
               num_iters: int = 20, sinkhorn_grad: str = "exact", sinkhorn_eps: float = 1e-6,
               init: str = "paper", alpha_init: float = 0.01, identity_logit: float = 6.0,
               res_projection: str = "sinkhorn", implementation: str = "auto",
               capture_maps: bool = False, fixed_maps: tuple[str, ...] = (), rngs: nnx.Rngs):
    super().__init__(sublayer, num_streams, features, implementation, capture_maps, fixed_maps)
    validation.check_int("num_iters", num_iters, 1)
    validation.check_choice("sinkhorn_grad", sinkhorn_grad, ops.GRAD_MODES)
    validation.check_choice("init", init, MHC_INITS)
    validation.check_choice("res_projection", res_projection, RES_PROJECTIONS)
    lite = res_projection == "permutations"
    if lite:
      check_lite_streams(num_streams)
    self.num_iters = num_iters
    self.sinkhorn_grad = sinkhorn_grad
    self.sinkhorn_eps = sinkhorn_eps
    self.res_projection = res_projection
    if num_streams == 1:
      return
    n = num_streams
    k = ops.num_lite_coefficients(n) if lite else ops.num_coefficients(n)
    std = (n * features) ** -0.5
    self.phi = nnx.Param(std * jax.random.normal(rngs.params(), (n * features, k), jnp.float32),
                         logical_axes=("stream_embed", "coefficients"))
    self.alpha = nnx.Param(jnp.full((3,), alpha_init, jnp.float32), logical_axes=(None,))
    bias = jnp.zeros((k,), jnp.float32)
    if init == "identity":
      one_hot = jax.nn.one_hot(jnp.asarray(layer_index) % n, n, dtype=jnp.float32)
      pre = identity_logit * (2.0 * one_hot - 1.0)
      if lite:  # permutation 0 is the identity
        res = identity_logit * jax.nn.one_hot(0, k - 2 * n, dtype=jnp.float32)
      else:
        res = identity_logit * jnp.eye(n, dtype=jnp.float32).reshape(-1)
      bias = bias.at[:n].set(pre).at[2 * n:].set(res)
    self.bias = nnx.Param(bias, logical_axes=("coefficients",))

  def pre(self, x_XxNxC):
    if self.res_projection == "permutations":
      return ops.mhc_lite_connection_pre(x_XxNxC, self.phi[...], self.alpha[...], self.bias[...],
                                         implementation=self.implementation)
    return ops.mhc_connection_pre(
        x_XxNxC, self.phi[...], self.alpha[...], self.bias[...], num_iters=self.num_iters,
        sinkhorn_eps=self.sinkhorn_eps, sinkhorn_grad=self.sinkhorn_grad,
        implementation=self.implementation)


CONNECTIONS = ("residual", "hc", "mhc")


def make_connection(kind: str, sublayer: Callable, *, num_streams: int, features: int,
                    layer_index=0, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """Builds ``"residual"`` | ``"hc"`` | ``"mhc"`` around ``sublayer``; kwargs go to HC or mHC."""
  validation.check_choice("connection", kind, CONNECTIONS)
  if kind == "residual":
    return Residual(sublayer)
  cls = HyperConnection if kind == "hc" else ManifoldHyperConnection
  return cls(sublayer, num_streams=num_streams, features=features, layer_index=layer_index,
             rngs=rngs, **kwargs)
