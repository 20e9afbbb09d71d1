"""Builds, caches and loads the C++ CPU kernels (``csrc/``) and registers them with ``jax.ffi``.

The sources are compiled once with the system C++ compiler (``$CXX``, else ``c++``; C++20,
``-O3 -march=native``, warnings on) into :func:`cache_dir`, under a name keyed by every file in
``csrc/``, the flags, the jaxlib version, the compiler and the host CPU, with the compiler's
messages in a ``.log`` beside the library. ``python -m mhc_jax.ops.cpu build`` does it ahead of
use. :func:`status` says why the kernels are unusable (no compiler, a failed build, a library
that disagrees with the constants below); ``implementation="auto"`` then falls back to XLA.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import threading

import jax
import jaxlib

# The wrappers' assumptions about the library, checked against it at load (simd.h).
MAX_STREAMS = 8  # kMaxStreams: the kernels take 1 <= N <= 8
GRAD_SLOTS = 8  # kGradSlots: partial sums of the weight gradients, added up by XLA
LANES = 16  # kLanes: the coefficient forward takes phi padded to whole 16-float vectors

SOURCES = pathlib.Path(__file__).with_name("csrc")
_MAIN = "ffi.cc"  # the one translation unit; it includes the headers
# -Wno-psabi: on a CPU without AVX-512, GCC notes that 16-float vectors passed by value would use
# another calling convention than on one with it. Our vector helpers are inline functions of one
# translation unit, never called across a library boundary, so that ABI never applies.
_FLAGS = ("-O3", "-march=native", "-std=c++20", "-shared", "-fPIC", "-Wall", "-Wextra", "-Wno-psabi")
_CONSTANTS = {"max_streams": "MAX_STREAMS", "grad_slots": "GRAD_SLOTS", "lanes": "LANES"}
_TARGETS = {  # registered as mhc_jax_<name>
    "coef_fwd": "MhcCoefFwd",
    "coef_bwd": "MhcCoefBwd",
    "pre_fwd": "MhcPreFwd",
    "pre_bwd": "MhcPreBwd",
    "post_fwd": "MhcPostFwd",
    "post_bwd": "MhcPostBwd",
    "hc_fwd": "MhcHcFwd",
    "hc_bwd": "MhcHcBwd",
}
BUILD_COMMAND = "python -m mhc_jax.ops.cpu build"


def cache_dir() -> pathlib.Path:
  """Where built libraries go: ``$MHC_JAX_CACHE``, else ``~/.cache/mhc_jax``."""
  return pathlib.Path(os.environ.get("MHC_JAX_CACHE", pathlib.Path.home() / ".cache" / "mhc_jax"))


def _compiler() -> str:
  return os.environ.get("CXX", "c++")


def _cpu_signature() -> str:
  """What ``-march=native`` depends on, so a cache shared across machines stays correct."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("flags", "Features")):
        return line
  except OSError:
    pass
  return platform.processor() + platform.machine()


def _library(directory: pathlib.Path, cxx: str) -> pathlib.Path:
  parts = [jaxlib.__version__, cxx, _cpu_signature(), " ".join(_FLAGS)]
  for path in sorted(SOURCES.iterdir()):  # every file: a header edit must rebuild too
    if path.is_file():
      parts += [path.name, path.read_bytes()]
  digest = hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts))
  return directory / f"mhc_cpu_kernels-{digest.hexdigest()[:16]}.so"


def library_path() -> pathlib.Path:
  """The library for the current sources, jaxlib, compiler (``$CXX``) and CPU (built or not)."""
  return _library(cache_dir(), _compiler())


def log_path(library: pathlib.Path | None = None) -> pathlib.Path:
  """The compiler's messages (stderr) from building ``library`` (default :func:`library_path`)."""
  return (library or library_path()).with_suffix(".log")


def is_built() -> bool:
  """Whether :func:`library_path` exists (compiles nothing)."""
  return library_path().exists()


def compile_library(directory: pathlib.Path, cxx: str) -> tuple[pathlib.Path | None, str | None]:
  """Builds the library into ``directory`` unless there already: ``(library, None)`` or ``(None, why)``."""
  library = _library(directory, cxx)
  if library.exists():
    return library, None
  directory.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=directory) as tmp:
    built = pathlib.Path(tmp) / library.name
    # -isystem: XLA's headers are not ours to keep warning-free.
    command = [*shlex.split(cxx), *_FLAGS, "-isystem", jax.ffi.include_dir(),
               str(SOURCES / _MAIN), "-o", str(built)]
    try:
      proc = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:  # no such compiler
      return None, f"could not run the C++ compiler {cxx!r} ({e}); set CXX to a C++20 compiler"
    if proc.returncode != 0:
      return None, f"{cxx!r} failed to build {SOURCES.name}/{_MAIN}:\n{proc.stderr[-2000:]}"
    log = log_path(built)
    log.write_text(proc.stderr)
    # Atomic, log first: of concurrent builds one file wins, and a library has its log.
    os.replace(log, log_path(library))
    os.replace(built, library)
  return library, None


def check_constants(lib: ctypes.CDLL) -> None:
  """Raises a RuntimeError unless the library's constants equal this module's."""
  try:
    constant = lib.mhc_jax_cpu_constant
  except AttributeError:
    raise RuntimeError(f"{lib._name} has no mhc_jax_cpu_constant (built from other sources?)") from None
  constant.restype, constant.argtypes = ctypes.c_int64, [ctypes.c_char_p]
  module = sys.modules[__name__]
  for name, attr in _CONSTANTS.items():
    ours, theirs = getattr(module, attr), constant(name.encode())
    if ours != theirs:
      raise RuntimeError(f"the C++ kernels' {name} is {theirs} but {__name__}.{attr} is {ours}: the "
                         f"library and the Python wrappers disagree (rebuild from one checkout)")


def _load(library: pathlib.Path) -> str | None:
  """Loads the library, checks its constants and registers its targets: None or why not."""
  try:
    lib = ctypes.cdll.LoadLibrary(str(library))
  except OSError as e:
    return f"loading {library} failed: {e}"
  try:
    check_constants(lib)
  except RuntimeError as e:
    return str(e)
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f"mhc_jax_{name}", jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform="cpu")
  return None


_lock = threading.Lock()  # one build and one registration per process
_ready = False
_failure: str | None = None  # a failed build or load: not retried in this process


def status(allow_build: bool) -> str | None:
  """None when the kernels are loaded and registered, else why not.

  With ``allow_build=False`` nothing is compiled: a missing library is reported (and not
  remembered, so a later call may build it); an existing one is loaded.
  """
  return _status(allow_build, announce=True)


def _status(allow_build: bool, announce: bool) -> str | None:
  global _ready, _failure
  if _ready:
    return None
  with _lock:
    if _ready or _failure is not None:
      return _failure
    library = library_path()
    if not library.exists():
      if not allow_build:
        return f"the C++ CPU kernels are not built ({library} is missing); run `{BUILD_COMMAND}`"
      if announce:
        print(f"mhc_jax: compiling the C++ CPU kernels (once, ~15 s) into {library.parent}",
              file=sys.stderr, flush=True)
      built, _failure = compile_library(library.parent, _compiler())
      if _failure is not None:
        return _failure
      library = built
    _failure = _load(library)
    _ready = _failure is None
    return _failure


def ensure_built(announce: bool = True) -> None:
  """Builds the kernels if needed (saying so on stderr if ``announce``), loads and registers them.

  Raises ``RuntimeError("implementation='cpu' is unavailable: <why>")``; cheap once done.
  """
  error = _status(allow_build=True, announce=announce)
  if error is not None:
    raise RuntimeError(f"implementation='cpu' is unavailable: {error}")
