"""Pipeline parallelism: a GPipe schedule over the mesh's ``stage`` axis that carries the stream.

The blocks' stacked parameters are split over ``stage`` (the ``layers`` rule), so stage s holds
blocks ``[s L/S, (s+1) L/S)``. The batch is cut into M microbatches, and in step t of M + S - 1
steps stage s applies its blocks to microbatch t - s and sends the result to stage s + 1
(``lax.ppermute``). What crosses stages is the whole stream state of a microbatch, ``[Tm, N, C]``
(``[Tm, C]`` for the residual baseline), forward and, transposed, backward. The last stage's
outputs are summed over stages (the others contribute zeros), so the layers after the blocks see
an ordinary array. Stages are idle (compute discarded values) for a fraction
``(S - 1) / (M + S - 1)`` of the steps: the bubble.

Microbatch m holds the batch rows m, m + M, m + 2M, ...: strided, so that every microbatch keeps
the batch's split over the data-parallel axes. Everything runs under one ``jax.shard_map`` that
is manual over ``stage`` only; data, fsdp and tensor stay with XLA's partitioner, and the stream
ops' own per-shard kernels nest inside it (:mod:`mhc_jax.ops.sharding` skips manual axes).
The recomputation segments of ``ModelConfig.mhc_recompute`` lie within a stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from mhc_jax.models.config import ModelConfig
from mhc_jax.models.transformer import apply_blocks
from mhc_jax.parallel.rules import STAGE_AXIS


def bubble_fraction(stages: int, microbatches: int) -> float:
  """The share of GPipe's steps in which a stage has no microbatch: ``(S - 1) / (M + S - 1)``."""
  return (stages - 1) / (microbatches + stages - 1)


def check_pipeline(cfg: ModelConfig, stages: int, microbatches: int, batch_size: int,
                   data_ways: int = 1, owner: str = "TrainConfig") -> None:
  """Refuses a pipeline that does not fit the model and the batch, naming the value."""
  if stages == 1 and microbatches != 1:
    raise ValueError(f"{owner}.pipeline_microbatches={microbatches}: microbatches are a pipeline's; "
                     "set pipeline_stages > 1 or leave them at 1")
  if cfg.num_layers % stages:
    raise ValueError(f"{owner}.pipeline_stages={stages}: must divide model.num_layers={cfg.num_layers} "
                     "(each stage holds the same number of blocks)")
  if batch_size % microbatches or (batch_size // microbatches) % data_ways:
    raise ValueError(f"{owner}.pipeline_microbatches={microbatches}: batch_size={batch_size} must split "
                     f"into that many microbatches, each splitting evenly over the {data_ways} "
                     "data-parallel devices")
  cfg.recompute_blocks(stages)  # recomputation segments must fit within a stage


def pipelined_blocks(stages: int, microbatches: int):
  """A ``blocks`` function for :class:`~mhc_jax.models.TransformerLM` that runs its blocks as a
  GPipe pipeline of ``stages`` stages over ``microbatches`` microbatches, on the context mesh.

  A batch whose rows do not split into the microbatches (a validation set shorter than one
  batch) runs through the blocks in order instead, with the same parameters and results.
  """
  def blocks(graphdef, state, x, cfg: ModelConfig, *, seq_len: int):
    if (x.shape[0] // seq_len) % microbatches:
      return apply_blocks(graphdef, state, x, cfg, seq_len=seq_len)
    return gpipe(graphdef, state, x, cfg, seq_len=seq_len, stages=stages, microbatches=microbatches)

  return blocks


def gpipe(graphdef, state, x, cfg: ModelConfig, *, seq_len: int, stages: int, microbatches: int):
  """Applies the stacked blocks ``state`` (leading axis: blocks, split over ``stage``) to the
  stream ``x`` (``[T, ...]``, ``T = B * seq_len`` tokens, sequence-major). Returns ``(x, {})``."""
  s, m = stages, microbatches
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or dict(zip(mesh.axis_names, mesh.axis_sizes)).get(STAGE_AXIS) != s:
    raise ValueError(f"a {s}-stage pipeline runs on a mesh with a {STAGE_AXIS!r} axis of size {s} in context "
                     f"(jax.set_mesh(mhc_jax.parallel.make_mesh(..., stages={s}))); the context mesh is "
                     f"{dict(zip(mesh.axis_names, mesh.axis_sizes)) if not mesh.empty else 'none'}")
  t = x.shape[0]
  rows = t // seq_len
  if rows % m:
    raise ValueError(f"pipeline_microbatches={m}: must divide the batch's {rows} rows")
  # [B*L, ...] -> [B/M, M, L, ...] -> [M, B/M * L, ...]: microbatch j holds rows j, j + M, ...
  xs = x.reshape((rows // m, m, seq_len) + x.shape[1:])
  xs = jnp.moveaxis(xs, 1, 0).reshape((m, t // m) + x.shape[1:])

  def stage_program(local_state, xs):
    stage = lax.axis_index(STAGE_AXIS)

    def step(carry, i):
      # Stage 0 reads microbatch i (the last one again in the drain steps, discarded); the
      # others take what the previous stage sent.
      inputs = jnp.where(stage == 0, xs[jnp.minimum(i, m - 1)], carry)
      y, maps = apply_blocks(graphdef, local_state, inputs, cfg, seq_len=seq_len, stages=s)
      if jax.tree.leaves(maps):
        raise ValueError("capture_maps is not supported inside a pipeline; capture them from a "
                         "model run without one")
      return lax.ppermute(y, STAGE_AXIS, [(j, j + 1) for j in range(s - 1)]), y

    _, ys = lax.scan(step, jnp.zeros_like(xs[0]), jnp.arange(m + s - 1))
    # The last stage finished microbatch j at step j + S - 1; every other stage adds zeros.
    return lax.psum(jnp.where(stage == s - 1, ys[s - 1:], jnp.zeros_like(ys[s - 1:])), STAGE_AXIS)

  program = jax.shard_map(
      stage_program, in_specs=(jax.tree.map(lambda _: PartitionSpec(STAGE_AXIS), state), PartitionSpec()),
      out_specs=PartitionSpec(), axis_names={STAGE_AXIS}, check_vma=False)
  ys = program(state, xs)
  # [M, B/M * L, ...] -> [B/M, M, L, ...] -> [B*L, ...]
  ys = jnp.moveaxis(ys.reshape((m, rows // m, seq_len) + x.shape[1:]), 0, 1)
  return ys.reshape(x.shape), {}
