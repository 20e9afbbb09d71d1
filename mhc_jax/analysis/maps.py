"""Capturing the per-token connection maps of a model, in depth order (docs/math.md §7).

A connection with ``capture_maps`` set keeps the ``h_pre``, ``h_post`` and ``h_res`` of its last
call as ``nnx.Intermediate`` state. :func:`capture` switches that on for one forward pass, collects
the maps of every sublayer, stacks them along a leading sublayer axis ``S`` and puts the model back
as it was.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from mhc_jax.layers import HyperConnection, ManifoldHyperConnection

MAP_NAMES = ("h_pre", "h_post", "h_res")
BLOCK_SUBLAYERS = ("attn", "mlp")
"""The sublayers of one :class:`~mhc_jax.models.TransformerLM` block, in the order it applies them."""


def _connections(model: nnx.Module) -> list[nnx.Module]:
  return [node for _, node in nnx.iter_graph(model)
          if isinstance(node, HyperConnection | ManifoldHyperConnection)]


def _is_maps(node) -> bool:
  return isinstance(node, dict) and set(MAP_NAMES) <= set(node)


def _collect(node, out: list[dict]) -> None:
  """Appends the maps found under ``node`` (a pure dict of Intermediates) to ``out``, in depth order.

  ``connection_maps`` (TransformerLM) holds ``{"attn"|"mlp": maps}`` stacked over blocks: block b
  contributes its attention maps, then its MLP maps. Any other dict holding ``h_pre``, ``h_post``
  and ``h_res`` is one connection's maps; the others are searched in their key order.
  """
  if not isinstance(node, dict):
    return
  for key, child in node.items():
    if key == "connection_maps" and isinstance(child, dict) and set(child) == set(BLOCK_SUBLAYERS):
      if not all(_is_maps(child[s]) for s in BLOCK_SUBLAYERS):
        raise ValueError(f"connection_maps must hold {MAP_NAMES} for each of {BLOCK_SUBLAYERS}")
      blocks = child[BLOCK_SUBLAYERS[0]]["h_res"].shape[0]
      for b in range(blocks):
        out.extend({name: child[s][name][b] for name in MAP_NAMES} for s in BLOCK_SUBLAYERS)
    elif _is_maps(child):
      out.append({name: child[name] for name in MAP_NAMES})
    else:
      _collect(child, out)


def capture(model: nnx.Module, tokens, **kwargs) -> dict[str, jax.Array]:
  """Runs ``model(tokens, **kwargs)`` once with map capture on and returns every sublayer's maps.

  The model may be a :class:`~mhc_jax.models.TransformerLM` or any NNX module built from the HC or
  mHC connections of :mod:`mhc_jax.layers`. Sublayers come in depth order: attention, FFN,
  attention, ... for a TransformerLM (its maps are stacked per block under ``attn`` and ``mlp``, and
  are interleaved here); for another model, the order in which the connections' Intermediates
  appear in its state (nnx orders a module's attributes by name and a list's items by index).

  Every connection's ``capture_maps`` is restored afterwards, and the model keeps the Intermediate
  state it held before the call (and no other).

  Returns:
    ``{"h_pre": [S, ..., N], "h_post": [S, ..., N], "h_res": [S, ..., N, N]}``, ``S`` the number of
    sublayers and ``...`` the token axes of the stream state (``[B, L]`` for a TransformerLM).

  Raises:
    ValueError: the model has no HC or mHC connection with more than one stream (a residual
      model, or ``num_streams == 1``, has no maps to capture), or the forward pass stored none.
  """
  connections = _connections(model)
  if not connections:
    raise ValueError(f"{type(model).__name__} has no HC or mHC connection, so it has no "
                     "connection maps to capture (a residual model has none)")
  if any(conn.num_streams == 1 for conn in connections):
    raise ValueError("connection maps need num_streams > 1: with one stream HC and mHC are a "
                     "plain residual and keep no maps")
  before = [conn.capture_maps for conn in connections]
  previous = nnx.pop(model, nnx.Intermediate)
  try:
    for conn in connections:
      conn.capture_maps = True
    model(tokens, **kwargs)
  finally:
    for conn, flag in zip(connections, before, strict=True):
      conn.capture_maps = flag
    captured = nnx.to_pure_dict(nnx.pop(model, nnx.Intermediate))
    if jax.tree.leaves(previous):
      nnx.update(model, previous)
  per_sublayer: list[dict] = []
  _collect(captured, per_sublayer)
  if not per_sublayer:
    raise ValueError(f"the forward pass of {type(model).__name__} stored no connection maps")
  shapes = {tuple(m["h_res"].shape) for m in per_sublayer}
  if len(shapes) != 1:
    raise ValueError(f"sublayers' maps have different shapes {sorted(shapes)}; cannot stack them")
  return {name: jnp.stack([m[name] for m in per_sublayer]) for name in MAP_NAMES}
