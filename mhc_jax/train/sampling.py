"""Byte-level sampling from a trained LM (no KV cache: one fixed-size forward per byte)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def generate(model, prompt: str, length: int, *, context: int, temperature: float = 0.8,
             seed: int = 0) -> str:
  """Continues ``prompt`` by ``length`` bytes; ``temperature=0`` is greedy."""
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0")
  if length < 0:
    raise ValueError(f"length={length} must be >= 0")
  tokens = list(prompt.encode("utf-8")) or [ord("\n")]
  graphdef, state = nnx.split(model)

  @jax.jit
  def next_logits(window, position):
    logits = nnx.merge(graphdef, state)(window[None])[0]
    return logits[position]

  rng = np.random.default_rng(seed)
  out = []
  for _ in range(length):
    window = tokens[-context:]
    position = len(window) - 1
    padded = np.zeros(context, np.int32)
    padded[: len(window)] = window  # causal: the padding after `position` cannot matter
    logits = np.asarray(next_logits(jnp.asarray(padded), position), np.float64)
    if temperature == 0:
      token = int(np.argmax(logits))
    else:
      p = np.exp((logits - logits.max()) / temperature)
      token = int(rng.choice(len(p), p=p / p.sum()))
    tokens.append(token)
    out.append(token)
  return bytes(out).decode("utf-8", errors="replace")
