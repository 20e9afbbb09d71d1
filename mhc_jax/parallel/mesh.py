"""The device mesh, the train state's shardings, global batches from per-process rows, and
``jax.distributed`` start-up.

The mesh has the axes ``(stage, data, fsdp, tensor)``: the pipeline stages (``rules.STAGE_AXIS``,
size 1 without a pipeline) and ``rules.MESH_AXES``, with Auto axis types (XLA's partitioner
places what the shardings leave open). The config gives the sizes of ``MESH_AXES``, one of which
may be -1: the devices left over. The same code runs on one process or many: JAX's multi-controller runtime
gives every process the same program, each process feeds its own rows of the batch, and
``jax.make_array_from_process_local_data`` joins them into one global array.
"""

from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mhc_jax.parallel.rules import MESH_AXES, STAGE_AXIS, batch_axes, batch_spec


def check_shape(shape, owner: str = "") -> None:
  """Refuses a mesh shape that is not one int per axis of ``MESH_AXES``, each >= 1 or -1 (once)."""
  if (not isinstance(shape, tuple) or len(shape) != len(MESH_AXES) or shape.count(-1) > 1
      or any(isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1) for v in shape)):
    prefix = f"{owner}." if owner else ""
    raise ValueError(f"{prefix}mesh={shape!r}: needs one size per axis {MESH_AXES}, each an int >= 1, "
                     "at most one -1 (the devices left over)")


def resolve_shape(shape, num_devices: int, stages: int = 1) -> tuple[int, ...]:
  """``shape`` (data, fsdp, tensor) with its -1 filled in from the ``num_devices / stages`` devices
  of one pipeline stage; checks that it fits."""
  shape = tuple(shape)
  check_shape(shape)
  if num_devices % stages:
    raise ValueError(f"{stages} pipeline stages do not split the {num_devices} devices evenly")
  per_stage = num_devices // stages
  where = f"{num_devices} devices" if stages == 1 else f"{per_stage} devices per stage ({stages} stages)"
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if per_stage % known:
      raise ValueError(f"mesh={shape}: {where} do not split into {known} x the rest")
    shape = tuple(per_stage // known if s == -1 else s for s in shape)
  if math.prod(shape) > per_stage:
    raise ValueError(f"mesh={shape} (data, fsdp, tensor) needs {math.prod(shape)} devices; there are "
                     f"{where} (set --config.mesh, e.g. '(-1, 1, 1)' for data parallel over all)")
  return shape


def make_mesh(shape=(-1, 1, 1), devices=None, stages: int = 1) -> Mesh:
  """A (stage, data, fsdp, tensor) mesh over ``devices`` (default: every device of every process),
  ``shape`` giving the sizes of (data, fsdp, tensor) within each of the ``stages`` pipeline stages.

  A single process may use fewer devices than it has (the first ones), e.g. ``(1, 1, 1)``;
  several processes must use all of theirs.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = (stages,) + resolve_shape(shape, len(devices), stages)
  if math.prod(shape) < len(devices):
    if jax.process_count() > 1:
      raise ValueError(f"mesh={shape} leaves devices out: with {jax.process_count()} processes the "
                       f"mesh must cover all {len(devices)} devices")
    devices = devices[:math.prod(shape)]
  axes = (STAGE_AXIS,) + MESH_AXES
  return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)


def state_shardings(abstract_state: dict, param_shardings: dict, tx: optax.GradientTransformation,
                    mesh: Mesh) -> dict:
  """Shardings of ``{"step", "params", "opt_state"}``: optimizer moments like their parameter,
  everything else (the step, Adam's count) replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_state = optax.tree_map_params(tx, lambda _, sharding: sharding, abstract_state["opt_state"],
                                    param_shardings, transform_non_params=lambda _: replicated)
  return {"step": replicated, "params": param_shardings, "opt_state": opt_state}


def with_shardings(abstract, shardings):
  """``jax.ShapeDtypeStruct``s of ``abstract`` carrying ``shardings`` (e.g. an orbax restore target)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def data_parallel_size(mesh: Mesh, rules) -> int:
  """Ways a batch's rows split: the product of the sizes of the ``batch`` rule's mesh axes."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return math.prod(sizes[a] for a in batch_axes(rules))


def batch_sharding(mesh: Mesh, rules, global_rows: int) -> NamedSharding:
  """Rows split over the data-parallel axes; replicated when they do not split evenly (a short
  validation set's last batch)."""
  split = global_rows % data_parallel_size(mesh, rules) == 0
  return NamedSharding(mesh, batch_spec(rules) if split else PartitionSpec())


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
  """The rows of a global batch that this process's devices hold under ``sharding`` (one block)."""
  index = sharding.addressable_devices_indices_map(tuple(global_shape))
  starts = [i[0].start or 0 for i in index.values()]
  stops = [global_shape[0] if i[0].stop is None else i[0].stop for i in index.values()]
  return slice(min(starts), max(stops))


def global_batch(local_rows: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
  """The global batch from this process's rows (its ``process_rows``)."""
  return jax.make_array_from_process_local_data(sharding, local_rows, (global_rows,) + local_rows.shape[1:])


CLUSTER_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts JAX's multi-process runtime; True if this run has several processes.

  With the three arguments: those. Without them, JAX's own cluster detection (SLURM, Open MPI,
  ``JAX_COORDINATOR_ADDRESS``) applies when the environment shows several processes; a plain
  single-process run starts nothing. Call before anything else touches JAX's devices.
  """
  given = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in given):
    if any(v is None for v in given):
      raise ValueError("--coordinator_address, --num_processes and --process_id go together; got "
                       f"{coordinator_address!r}, {num_processes!r}, {process_id!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return num_processes > 1
  on_cluster = os.environ.get("JAX_COORDINATOR_ADDRESS") or any(
      int(os.environ.get(v, "1") or 1) > 1 for v in CLUSTER_VARIABLES)
  if not on_cluster:
    return False
  jax.distributed.initialize()
  print(f"mhc_jax: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local devices", file=sys.stderr)
  return jax.process_count() > 1
