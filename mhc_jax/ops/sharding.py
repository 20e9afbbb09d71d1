"""Kernels per shard: the fused stream ops under ``jax.shard_map`` over the token axis.

XLA's partitioner cannot split a custom call (an FFI kernel, a Pallas or a Triton launch):
it gathers the sharded operands onto every device and runs the whole kernel on each. The
stream ops act on each token alone, so on a mesh they run under ``jax.shard_map`` instead,
one kernel call per device on that device's tokens:

  * the stream ``[T, N, C]`` and every per-token array (``u``, ``y``, the maps) are split
    over T, across the mesh axes that split the batch: those given to ``stream_axes`` (the
    trainer gives its data-parallel axes, data and fsdp), else every axis of the mesh;
  * N and C stay whole: the maps need a token's whole ``N*C`` vector (the RMS over it and
    the GEMM with phi's ``N*C`` rows), which the fused kernels read in one pass;
  * the parameters (phi, alpha, bias; HC's w and static parts) enter replicated: an FSDP-
    sharded phi is all-gathered, and its gradient comes back summed over every shard
    (the transpose of a replicated ``shard_map`` input is a ``psum``).

The mesh is the one in context (``jax.set_mesh``) or, outside a trace, the mesh of x's
``NamedSharding``. Inside a ``shard_map`` of the caller's (e.g. a pipeline stage), its
manual axes are already split, and only the remaining axes are used. docs/parallel.md
explains the placement.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def _tracing(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def mesh_of(x):
  """The mesh the stream x is laid out on: the context mesh, else x's own; None if unknown."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh
  if _tracing(x):
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    return None if mesh is None or mesh.empty else mesh
  sharding = getattr(x, "sharding", None)
  return sharding.mesh if isinstance(sharding, NamedSharding) else None


class _Axes(threading.local):
  axes: tuple[str, ...] | None = None


_STREAM_AXES = _Axes()


@contextlib.contextmanager
def stream_axes(axes: Sequence[str] | None) -> Iterator[None]:
  """Within the block, the stream ops split tokens over these mesh axes only (None: all of them).

  Give the axes that split your batch. Splitting tokens over a tensor-parallel axis too would
  halve the stream's memory, but XLA's partitioner then moves every sublayer's input and output
  between the two layouts by gathering them whole onto each device.
  """
  previous, _STREAM_AXES.axes = _STREAM_AXES.axes, None if axes is None else tuple(axes)
  try:
    yield
  finally:
    _STREAM_AXES.axes = previous


def token_axes(mesh) -> tuple[str, ...]:
  """The mesh axes the stream ops split tokens over: those of size > 1 that are not manual, and
  among ``stream_axes`` when that is set."""
  if mesh is None:
    return ()
  chosen = _STREAM_AXES.axes
  return tuple(name for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types)
               if size > 1 and kind != AxisType.Manual and (chosen is None or name in chosen))


def num_shards(mesh) -> int:
  """Token shards of ``mesh``: the product of the sizes of its ``token_axes``."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes)) if mesh is not None else {}
  return math.prod(sizes[a] for a in token_axes(mesh))


def multi_device(x) -> bool:
  """Whether the program around x is partitioned over several devices (known mesh or not)."""
  if token_axes(mesh_of(x)):
    return True
  sharding = None if _tracing(x) else getattr(x, "sharding", None)
  return sharding is not None and len(sharding.device_set) > 1


def shard_problem(x_TxNxC, name: str) -> str | None:
  """Why ``implementation=name`` cannot run per shard on x's mesh, else None."""
  mesh = mesh_of(x_TxNxC)
  if not token_axes(mesh):
    return None
  t, shards = x_TxNxC.shape[0], num_shards(mesh)
  if t % shards:
    return (f"implementation={name!r} runs per shard of the token axis, but the {t} tokens of x "
            f"{tuple(x_TxNxC.shape)} do not split evenly over the {shards} devices of mesh axes "
            f"{token_axes(mesh)} (use 'xla' or 'auto')")
  return None


def with_token_layout(tree, x_TxNxC):
  """Every array in ``tree`` (token axis first) pinned to the stream's layout: tokens split over
  ``token_axes``, the rest whole. For the ops that XLA's partitioner places (``"xla"``): without
  it, the partitioner may take the layout of the FSDP-split weights (C split over fsdp, tokens
  whole) and move between the two by gathering whole arrays."""
  mesh = mesh_of(x_TxNxC)
  axes = token_axes(mesh)
  if not axes or x_TxNxC.shape[0] % num_shards(mesh) or AxisType.Explicit in mesh.axis_types:
    return tree  # explicit axes: the layout is in the arrays' types, the caller's to choose
  return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, PartitionSpec(axes)))


def per_shard(fn, x_TxNxC, per_token: tuple, shared: tuple = ()):
  """``fn(*per_token, *shared)``, run once per token shard of x's mesh (directly on one device).

  ``per_token`` arrays have the token axis first; ``shared`` arrays are replicated into every
  shard. The outputs (any pytree) are per token.
  """
  mesh = mesh_of(x_TxNxC)
  axes = token_axes(mesh)
  if not axes:
    return fn(*per_token, *shared)
  spec = PartitionSpec(axes)
  # check_vma=False: FFI and Pallas calls do not type their outputs as varying over the mesh
  # axes. The transpose still sums a replicated input's cotangent over the shards.
  body = lambda tok, rep: fn(*tok, *rep)
  per_token, shared = tuple(per_token), tuple(shared)
  if AxisType.Explicit in mesh.axis_types:  # explicit axes: the inputs must already match the specs
    per_token = tuple(jax.sharding.reshard(a, spec) for a in per_token)
    shared = tuple(jax.sharding.reshard(a, PartitionSpec()) for a in shared)
  return jax.shard_map(body, mesh=mesh, in_specs=(spec, PartitionSpec()), out_specs=spec,
                       check_vma=False)(per_token, shared)
