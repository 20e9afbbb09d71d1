"""Per-device memory of a config's train step, from an ahead-of-time compile: nothing is allocated.

``train_step_memory(cfg, mesh)`` lowers and compiles the train step for ``mesh`` from abstract
arrays (shapes and shardings only) and reports, per device, in bytes:

  parameters         this device's shards of the parameters (from the shardings)
  optimizer_state    its shards of AdamW's moments and count
  batch              its rows of one batch
  temp               XLA's scratch for the step: activations kept for the backward pass,
                     gradients, collectives' buffers (``compiled.memory_analysis()``)
  total              parameters + optimizer state + batch + temp + outputs not aliased
                     to donated inputs (the peak a device must hold)

``experiments/aot.py`` prints it for a mesh of N devices.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from mhc_jax import ops, parallel
from mhc_jax.train import trainer
from mhc_jax.train.config import TrainConfig
from mhc_jax.train.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes per device of one train step (see the module docstring)."""
  parameters: int
  optimizer_state: int
  batch: int
  temp: int
  unaliased_outputs: int
  argument_bytes_by_xla: int  # XLA's own count of the step's inputs, a cross-check of the first three

  @property
  def total(self) -> int:
    return self.parameters + self.optimizer_state + self.batch + self.temp + self.unaliased_outputs


def _shard_bytes(tree) -> int:
  """Bytes of device 0's shards of every array in ``tree`` (ShapeDtypeStructs with shardings)."""
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def compile_train_step(cfg: TrainConfig, mesh):
  """``(compiled step, abstract state, abstract batch)`` for ``mesh``, from abstract arrays only."""
  ops.prepare(cfg.model.implementation)
  tx = make_optimizer(cfg)
  with trainer.on_mesh(cfg, mesh):
    graphdef, state, shardings = trainer.abstract_state(cfg, tx, mesh)
    rules = parallel.RULE_SETS[cfg.sharding]
    batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len + 1), jnp.int32,
                                 sharding=parallel.batch_sharding(mesh, rules, cfg.batch_size))
    step = trainer.make_train_step(graphdef, tx, shardings, trainer.model_blocks(cfg))
    compiled = step.lower(state, batch).compile()
  return compiled, state, batch


def train_step_memory(cfg: TrainConfig, mesh) -> StepMemory:
  """Per-device memory of ``cfg``'s train step on ``mesh`` (compiled, not run)."""
  compiled, state, batch = compile_train_step(cfg, mesh)
  stats = compiled.memory_analysis()
  return StepMemory(
      parameters=_shard_bytes(state["params"]),
      optimizer_state=_shard_bytes(state["opt_state"]) + _shard_bytes(state["step"]),
      batch=_shard_bytes(batch),
      temp=int(stats.temp_size_in_bytes),
      unaliased_outputs=max(int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes), 0),
      argument_bytes_by_xla=int(stats.argument_size_in_bytes),
  )
