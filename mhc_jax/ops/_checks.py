"""Argument checks shared by the ops: each error names the bad value."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp


def check_choice(name: str, value, choices: Sequence) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}")


def check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name}={value!r} must be a Python int >= {minimum}")


def check_nonnegative(name: str, value) -> None:
  if not isinstance(value, (int, float)) or value < 0:
    raise ValueError(f"{name}={value!r} must be a non-negative Python number")


def check_float(name: str, x) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating array, got dtype {x.dtype}")


def check_shape(name: str, x, expected: tuple[int, ...], why: str = "") -> None:
  if tuple(x.shape) != tuple(expected):
    suffix = f" ({why})" if why else ""
    raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(expected)}{suffix}")


def compute_dtype(*dtypes) -> jnp.dtype:
  """fp32 for bf16/fp16/fp32 inputs, fp64 when any input is fp64 (tests)."""
  return jnp.result_type(jnp.float32, *dtypes)
