"""Which backend runs an op: the one place that settles ``implementation="auto"``.

``select(implementation, ops, x, cfg)`` returns the backend module (see
:mod:`mhc_jax.ops.backends`) that runs ``ops`` on the stream ``x``. A named implementation
runs or raises a ``ValueError``/``RuntimeError`` that says why it cannot; it never falls back.
``"auto"`` is the only choice that chooses:

  * CPUs: ``"cpu"`` (the C++ kernels) for fp32 streams with 1 <= N <= 8 and the exact
    Sinkhorn gradient, when the kernels are built; on a mesh also when the tokens split evenly
    over its devices (the kernels then run per shard, :mod:`mhc_jax.ops.sharding`). Else ``"xla"``.
  * GPUs and TPUs: ``"xla"``. The GPU kernels are checked in interpret mode and lowered for
    CUDA, but not yet timed on a GPU.

The mesh is read from the abstract mesh in context (``jax.set_mesh``) or from x's sharding,
not from the global device count. On a mesh every backend but ``"xla"`` runs under
``jax.shard_map`` over the token axis (XLA's partitioner would all-gather a custom call's
sharded operands); ``"xla"`` is left to the partitioner. A stream on several devices with no
mesh to read (a sharding that is not a ``NamedSharding``) gets ``"xla"`` from ``"auto"``.

Backends are imported on first use: importing :mod:`mhc_jax.ops` loads no Pallas, Triton
or jax-triton module and compiles nothing. The C++ kernels are never compiled inside a
trace: an eager call may build them (one line on stderr, ~15 s, once per machine), a traced
one only loads a library that is built already (``python -m mhc_jax.ops.cpu build``);
``"auto"`` inside a trace with no library runs ``"xla"`` and says so once.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable

import jax
import jax.numpy as jnp

from mhc_jax import validation
from mhc_jax.ops import sharding

IMPLEMENTATIONS = ("auto", "xla", "cpu", "pallas", "triton")
OPS = ("mhc_maps", "hc_maps", "pre", "post")
_WARNED: set[str] = set()


def backend(name: str):
  """The backend module ``mhc_jax.ops.backends.<name>`` (imported on first use)."""
  validation.check_choice("implementation", name, IMPLEMENTATIONS[1:])
  return importlib.import_module(f"mhc_jax.ops.backends.{name}")


def check_implementation(implementation: str) -> None:
  """Refuses unknown names, and backends that cannot run on this platform at all.

  Cheap: imports no kernel module and builds nothing (the layers call it at construction).
  """
  validation.check_choice("implementation", implementation, IMPLEMENTATIONS)
  platform = jax.default_backend()
  if implementation == "triton" and platform != "gpu":
    raise ValueError(f"implementation='triton' runs on GPUs only (jax-triton has no CPU mode); the "
                     f"backend is {platform!r}: use 'pallas' (interpret mode) or 'xla'")
  if implementation == "cpu" and platform != "cpu":
    raise ValueError(f"implementation='cpu' runs on the CPU backend only; the backend is "
                     f"{platform!r}: use 'xla', 'pallas' or 'triton'")


def prepare(implementation: str) -> None:
  """Readies ``implementation`` before anything is traced: builds the C++ kernels if it may use them.

  That is ``"cpu"``, and ``"auto"`` on a CPU (there a failed build is a warning: ``"auto"``
  then runs XLA). Training and benchmark entry points call it once at start-up.
  """
  check_implementation(implementation)
  if implementation == "cpu" or (implementation == "auto" and jax.default_backend() == "cpu"):
    reason = backend("cpu").unavailable(allow_build=True)
    if reason is not None and implementation == "cpu":
      raise RuntimeError(reason)
    if reason is not None:
      _warn_once(reason)


def _warn_once(reason: str) -> None:
  if reason not in _WARNED:  # e.g. not built yet, or no compiler: said once per process
    _WARNED.add(reason)
    warnings.warn(f"mhc_jax: implementation='auto' runs the XLA ops: {reason}", stacklevel=3)


def is_tracing(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _platform(x) -> str:
  if not is_tracing(x) and hasattr(x, "devices"):
    return next(iter(x.devices())).platform
  return jax.default_backend()


def _unsupported(module, ops: tuple[str, ...], x, cfg) -> str | None:
  """Why ``module`` cannot run ``ops`` on this input (a ValueError), else None."""
  missing = [op for op in ops if op not in module.OPS]
  if missing:
    return (f"implementation={module.NAME!r} has no kernel for {', '.join(missing)} "
            f"(it runs {', '.join(sorted(module.OPS))}); use 'xla' or 'auto'")
  return next(filter(None, (module.unsupported(op, x, cfg) for op in ops)), None)


def select(implementation: str, ops: Iterable[str], x, cfg=None):
  """The backend module that runs every op in ``ops`` on the stream x ``[T, N, C]``."""
  ops = tuple(ops)
  check_implementation(implementation)
  allow_build = not is_tracing(x)
  if implementation != "auto":
    module = backend(implementation)
    reason = module.unavailable(allow_build=allow_build)
    if reason is not None:
      raise RuntimeError(reason)
    reason = _unsupported(module, ops, x, cfg)
    if reason is None and module.NAME != "xla":
      reason = sharding.shard_problem(x, module.NAME)
    if reason is not None:
      raise ValueError(reason)
    return module
  mesh_known = bool(sharding.token_axes(sharding.mesh_of(x))) or not sharding.multi_device(x)
  if _platform(x) == "cpu" and mesh_known and x.dtype == jnp.float32:
    cpu = backend("cpu")
    if _unsupported(cpu, ops, x, cfg) is None and sharding.shard_problem(x, "cpu") is None:
      reason = cpu.unavailable(allow_build=allow_build)
      if reason is None:
        return cpu
      _warn_once(reason)
  return backend("xla")


def run(module, fn, x_TxNxC, per_token: tuple, shared: tuple = ()):
  """``fn(*per_token, *shared)`` for the backend ``module`` that ``select`` chose for x.

  On a mesh, kernels run once per token shard (:func:`mhc_jax.ops.sharding.per_shard`);
  ``"xla"`` is left to XLA's partitioner, its per-token inputs and outputs pinned to the stream's
  layout (:func:`mhc_jax.ops.sharding.with_token_layout`).
  """
  if module.NAME == "xla":
    out = fn(*sharding.with_token_layout(tuple(per_token), x_TxNxC), *shared)
    return sharding.with_token_layout(out, x_TxNxC)
  return sharding.per_shard(fn, x_TxNxC, per_token, shared)
