"""Argument checks used across the package (ops, layers, models, configs): each error names the bad value.

``owner`` prefixes the name in messages, e.g. ``check_int("seq_len", 0, 1, owner="TrainConfig")``
raises ``TrainConfig.seq_len=0: must be an int >= 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp


def _fail(name: str, value, why: str, owner: str):
  prefix = f"{owner}." if owner else ""
  raise ValueError(f"{prefix}{name}={value!r}: {why}")


def check_choice(name: str, value, choices: Sequence, *, owner: str = "") -> None:
  if value not in choices:
    _fail(name, value, f"must be one of {tuple(choices)}", owner)


def check_int(name: str, value, minimum: int, *, owner: str = "") -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    _fail(name, value, f"must be an int >= {minimum}", owner)


def check_number(name: str, value, *, low: float = 0.0, high: float = float("inf"),
                 low_open: bool = False, high_open: bool = True, owner: str = "") -> None:
  """A Python number in the interval from ``low`` to ``high`` (open or closed at each end)."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
  if not ok:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    _fail(name, value, f"must be a number in {interval}", owner)


def check_nonnegative(name: str, value, *, owner: str = "") -> None:
  check_number(name, value, owner=owner)


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
