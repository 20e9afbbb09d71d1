"""Sharded training: the (stage, data, fsdp, tensor) mesh, logical-axis rule sets, pipeline stages,
and multi-process set-up.

  rules     logical axis names of the parameters and the DP / FSDP / FSDP+TP rule sets
  mesh      the mesh, the train state's shardings, global batches, ``jax.distributed``
  pipeline  GPipe over the stage axis, carrying the [tokens, N, C] stream between stages

The stream ops place their own kernels per shard (:mod:`mhc_jax.ops.sharding`);
docs/parallel.md explains where each array lives and why.
"""

from mhc_jax.parallel.mesh import (batch_sharding, check_shape, data_parallel_size, global_batch, initialize_distributed, make_mesh,
                                   process_rows, resolve_shape, state_shardings, with_shardings)
from mhc_jax.parallel.rules import LOGICAL_AXES, MESH_AXES, RULE_SETS, STAGE_AXIS, batch_axes, batch_spec, param_shardings, spec

__all__ = ["LOGICAL_AXES", "MESH_AXES", "RULE_SETS", "STAGE_AXIS", "batch_axes", "batch_sharding", "batch_spec", "check_shape", "data_parallel_size", "global_batch",
           "initialize_distributed", "make_mesh", "param_shardings", "process_rows", "resolve_shape", "spec",
           "state_shardings", "with_shardings"]
