"""Model boundaries for multi-stream connections: expand at the input, reduce or head at the output."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from mhc_jax import validation


def expand_streams(x_XxC: jax.Array, num_streams: int) -> jax.Array:
  """Copies ``[..., C]`` into ``num_streams`` identical streams ``[..., N, C]``."""
  validation.check_int("num_streams", num_streams, 1)
  return jnp.broadcast_to(x_XxC[..., None, :], x_XxC.shape[:-1] + (num_streams, x_XxC.shape[-1]))


def reduce_streams(x_XxNxC: jax.Array) -> jax.Array:
  """Sums the streams, ``[..., N, C] -> [..., C]`` (HC's output reduction, our default)."""
  return jnp.sum(x_XxNxC, axis=-2)


class StreamHead(nnx.Module):
  """Learned output reduction (DeepSeek-V4): ``h = sum_i w_i x_i`` with per-token weights.

  ``w = sigmoid(alpha * (v phi) / rms(v) + b) + eps`` from v = vec(x), computed like H_pre.
  At init (b = 0, small alpha) the weights are ~1/2, i.e. the stream sum up to a scale
  that the final norm removes.
  """

  def __init__(self, num_streams: int, features: int, *, alpha_init: float = 0.01,
               eps: float = 1e-6, rms_eps: float = 1e-6, rngs: nnx.Rngs):
    validation.check_int("num_streams", num_streams, 1)
    validation.check_int("features", features, 1)
    n = num_streams
    self.num_streams, self.features, self.eps, self.rms_eps = n, features, eps, rms_eps
    std = (n * features) ** -0.5
    self.phi = nnx.Param(std * jax.random.normal(rngs.params(), (n * features, n), jnp.float32),
                         logical_axes=("stream_embed", None))
    self.alpha = nnx.Param(jnp.asarray(alpha_init, jnp.float32), logical_axes=())
    self.bias = nnx.Param(jnp.zeros((n,), jnp.float32), logical_axes=(None,))

  def weights(self, x_XxNxC: jax.Array) -> jax.Array:
    """Per-token stream weights ``[..., N]`` in fp32."""
    n, c = self.num_streams, self.features
    if x_XxNxC.ndim < 2 or x_XxNxC.shape[-2:] != (n, c):
      raise ValueError(f"StreamHead expects x of shape [..., {n}, {c}], got {x_XxNxC.shape}")
    v = x_XxNxC.reshape(x_XxNxC.shape[:-2] + (n * c,)).astype(jnp.float32)
    inv_r = lax.rsqrt(jnp.mean(jnp.square(v), axis=-1, keepdims=True) + self.rms_eps)
    logits = self.alpha[...] * (v @ self.phi[...]) * inv_r + self.bias[...]
    return jax.nn.sigmoid(logits) + self.eps

  def __call__(self, x_XxNxC: jax.Array) -> jax.Array:
    w = self.weights(x_XxNxC)
    return jnp.sum(w[..., None] * x_XxNxC.astype(jnp.float32), axis=-2).astype(x_XxNxC.dtype)
