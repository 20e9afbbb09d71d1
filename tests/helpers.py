"""Shared test utilities."""

import jax
import jax.numpy as jnp
import numpy as np


def central_fd_vjp(f, x, cotangent, h=1e-6):
  """<cotangent, df/dx . e_k> for every coordinate k of x, by central differences (float64)."""
  f = jax.jit(f)
  x = np.asarray(x, np.float64)
  cot = np.asarray(cotangent, np.float64)
  grad = np.zeros_like(x)
  flat = grad.reshape(-1)
  for k in range(x.size):
    e = np.zeros(x.size)
    e[k] = h
    e = e.reshape(x.shape)
    flat[k] = np.sum(cot * (np.asarray(f(x + e)) - np.asarray(f(x - e)))) / (2 * h)
  return grad


def saved_residual_bytes(f, *args):
  """Bytes a VJP keeps between the forward and the backward pass."""
  _, vjp_fn = jax.vjp(f, *args)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(vjp_fn)
             if isinstance(leaf, jax.Array))


def max_abs(a, b):
  return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))
