"""Shared pieces of the Pallas kernels: the launcher and masked row/column loads and stores.

Kernels see 2-D refs ``[T, ...]`` with tokens as rows; each program owns ``block_t`` rows.
Small per-token maps (``[T, N]``, ``[T, N*N]``) are handled as lists of ``block_t`` vectors,
one per column, so the tiny N axes are unrolled in Python and never need a register layout.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

F32 = jnp.float32


def size(batch) -> int:
  return int(functools.reduce(lambda a, b: a * b, batch, 1))


def call(kernel, out_shape, t: int, block_t: int, *args, num_warps: int = 4, num_stages: int = 2,
         **static):
  """Runs ``kernel(*refs, block_t=block_t, **static)`` over ceil(T / block_t) programs.

  On CUDA/ROCm the kernel compiles through Triton; on any other backend it runs in Pallas
  interpret mode. The choice is made at lowering time (``lax.platform_dependent``).
  """
  body = functools.partial(kernel, block_t=block_t, **static)

  def run(*args, interpret: bool):
    return pl.pallas_call(
        body,
        out_shape=out_shape,
        grid=(pl.cdiv(t, block_t),),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name=kernel.__name__,
    )(*args)

  on_gpu = functools.partial(run, interpret=False)
  return lax.platform_dependent(*args, cuda=on_gpu, rocm=on_gpu,
                                default=functools.partial(run, interpret=True))


def rows(block_t: int, ref):
  """This program's row indices and their in-bounds mask."""
  r = pl.program_id(0) * block_t + jnp.arange(block_t)
  return r, r < ref.shape[0]


def load_tile(ref, r, cols, mask):
  """``ref[r, cols]`` as fp32, zeros outside ``mask``."""
  return pltriton.load(ref.at[r[:, None], cols[None, :]], mask=mask, other=0.0).astype(F32)


def store_tile(ref, r, cols, mask, value):
  pltriton.store(ref.at[r[:, None], cols[None, :]], value.astype(ref.dtype), mask=mask)


def load_maps(ref, r, rmask, count: int):
  """Columns 0..count-1 of a ``[T, count]`` map as ``count`` fp32 vectors of ``block_t``."""
  return [pltriton.load(ref.at[r, k], mask=rmask, other=0.0).astype(F32) for k in range(count)]


def store_maps(ref, r, rmask, values):
  for k, v in enumerate(values):
    pltriton.store(ref.at[r, k], v.astype(ref.dtype), mask=rmask)


def walk(length: int, block: int, body, init):
  """``body(cols, col_mask, carry)`` over ``length`` columns in chunks of ``block``."""
  def step(k, carry):
    cols = k * block + jnp.arange(block)
    return body(cols, cols < length, carry)
  return lax.fori_loop(0, pl.cdiv(length, block), step, init)
