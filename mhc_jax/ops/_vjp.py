"""The custom-VJP shape every stream op shares: save the inputs, call ``bwd(*inputs, g)``."""

from __future__ import annotations

import jax


def saving_inputs(fwd, bwd):
  """A ``jax.custom_vjp`` op ``fwd`` whose residuals are its inputs, in their own dtypes.

  ``bwd(*inputs, g)`` returns one cotangent per input. Nothing computed in the forward is
  kept, so a bf16 stream is never stored upcast.
  """
  op = jax.custom_vjp(fwd)
  op.defvjp(lambda *args: (fwd(*args), args), lambda args, g: bwd(*args, g))
  return op
