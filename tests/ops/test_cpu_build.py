"""Building, checking and loading the C++ CPU kernels (mhc_jax.ops.cpu.build), and its CLI."""

import ctypes
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from mhc_jax.ops.cpu import build

needs_compiler = pytest.mark.skipif(shutil.which(shlex.split(os.environ.get("CXX", "c++"))[0]) is None,
                                    reason="the C++ kernels need a C++20 compiler (CXX)")


def _python(code_or_args, cache: pathlib.Path, **env):
  """Runs Python in a fresh process (no process caches) with its own MHC_JAX_CACHE."""
  args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
  return subprocess.run([sys.executable, *args], env={**os.environ, "MHC_JAX_CACHE": str(cache), **env},
                        capture_output=True, text=True)


def test_a_missing_compiler_is_reported(tmp_path):
  library, error = build.compile_library(tmp_path, "no-such-c++-compiler")
  assert library is None and "no-such-c++-compiler" in error and "CXX" in error


@needs_compiler
def test_a_failing_compile_is_reported(tmp_path):
  library, error = build.compile_library(tmp_path, "c++ --no-such-flag")  # runs, and fails
  assert library is None and "failed to build csrc/ffi.cc" in error and "--no-such-flag" in error
  assert not list(tmp_path.rglob("*.so"))


@needs_compiler
def test_the_build_is_warning_free():
  build.ensure_built()
  assert build.log_path().exists(), "built without a log: remove the cached library and rebuild"
  assert build.log_path().read_text() == ""


@needs_compiler
def test_a_constant_mismatch_is_a_clear_error(monkeypatch):
  build.ensure_built()
  lib = ctypes.CDLL(str(build.library_path()))
  build.check_constants(lib)
  monkeypatch.setattr(build, "GRAD_SLOTS", 9)
  with pytest.raises(RuntimeError, match=r"grad_slots is 8 but mhc_jax\.ops\.cpu\.build\.GRAD_SLOTS is 9"):
    build.check_constants(lib)
  # At load, a mismatch leaves the kernels unregistered and unavailable, with the reason.
  code = ("from mhc_jax.ops.cpu import build\nbuild.LANES = 8\n"
          "print(build.status(allow_build=False))\nbuild.ensure_built()")
  out = _python(code, build.cache_dir())
  assert out.returncode != 0 and "lanes is 16 but mhc_jax.ops.cpu.build.LANES is 8" in out.stdout
  assert "RuntimeError: implementation='cpu' is unavailable: the C++ kernels' lanes is 16" in out.stderr


def test_status_without_building_says_how_to_build(tmp_path):
  out = _python("from mhc_jax.ops.cpu import build\n"
                "print(build.is_built(), build.status(allow_build=False))", tmp_path)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith("False ") and "run `python -m mhc_jax.ops.cpu build`" in out.stdout
  assert "compiling" not in out.stderr and not any(tmp_path.iterdir())


@needs_compiler
def test_status_without_building_loads_a_built_library(tmp_path):
  """A miss is not remembered: once the library is there, the same process loads it."""
  build.ensure_built()
  out = _python(["-c", "import shutil, sys\nfrom mhc_jax.ops.cpu import build\n"
                       "print(build.status(allow_build=False) is None)\n"
                       "shutil.copy(sys.argv[1], build.library_path())\n"
                       "print(build.status(allow_build=False) is None, build.is_built())",
                 str(build.library_path())], tmp_path)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["False", "True", "True"]


@needs_compiler
def test_the_cli_builds_and_reports_the_library(tmp_path):
  """On an empty cache the CLI compiles (saying so once), loads and checks the library and prints
  its path; a second call finds it built.

  $CXX is the compiler behind a wrapper that turns -O3 into -O0: the CLI and the cache are
  under test here, not the optimizer, and -O0 takes under half the CPU time. The -O3 build
  (``make kernels``, else test_the_build_is_warning_free) has its empty log checked there and
  runs every TestCpu kernel test.
  """
  cxx = tmp_path / "bin" / "c++-O0"
  cxx.parent.mkdir()
  cxx.write_text('#!/bin/sh\nfor a in "$@"; do shift; [ "$a" = -O3 ] && a=-O0; set -- "$@" "$a"; done\n'
                 f'exec {shlex.join(shlex.split(os.environ.get("CXX", "c++")))} "$@"\n')
  cxx.chmod(0o755)
  cache = tmp_path / "cache"
  out = _python(["-m", "mhc_jax.ops.cpu", "build"], cache, CXX=str(cxx))
  assert out.returncode == 0, out.stderr
  library = pathlib.Path(out.stdout.strip())
  assert library.exists() and library.parent == cache
  assert [line for line in out.stderr.splitlines() if "compiling" in line] == [
      f"mhc_jax: compiling the C++ CPU kernels (once, ~15 s) into {cache}"]
  assert build.log_path(library).read_text() == ""
  again = _python(["-m", "mhc_jax.ops.cpu", "build", "--quiet"], cache, CXX=str(cxx))
  assert again.returncode == 0 and again.stdout.strip() == str(library) and "compiling" not in again.stderr


def test_the_cli_reports_a_failure(tmp_path):
  out = _python(["-m", "mhc_jax.ops.cpu", "build"], tmp_path, CXX="no-such-c++-compiler")
  assert out.returncode == 1 and out.stdout == ""
  assert "implementation='cpu' is unavailable" in out.stderr and "no-such-c++-compiler" in out.stderr
