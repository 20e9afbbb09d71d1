"""Test setup: CPU only, 8 fake devices, one compilation cache (set before JAX initializes)."""

import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# Many tests compile the same programs (the tiny train step, above all), in both xdist workers and
# in the training subprocesses they start: JAX's persistent compilation cache serves the repeats.
# One folder per run, made by the first process to load this file (pytest itself, before xdist
# starts its workers, which inherit the variable) and deleted by it at the end.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mhc_jax_tests_jit_cache_")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs the test body with float64 enabled."""
  with jax.enable_x64(True):
    yield


def test_eight_fake_devices():
  assert jax.device_count() == 8


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)


# `make test` runs two xdist workers that take whole files in collection order, each the next file
# as it finishes one (--dist loadfile --no-loadscope-reorder). The run ends when the last file
# does, so the files that take minutes go first (longest first: the two workers then end within
# seconds of each other). Measured on 2 cores; the files not named here follow in their own order.
LONGEST_FIRST = ("ops/test_kernels.py", "train/test_sharded_training.py", "models/test_transformer.py",
                 "ops/test_sharding.py", "ops/test_aot.py", "train/test_trainer.py", "test_gpu_check.py",
                 "ops/test_sinkhorn.py", "ops/test_mhc.py", "models/test_recompute.py",
                 "parallel/test_pipeline.py", "test_notebooks.py")
_TESTS = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.relative_to(_TESTS).as_posix(), len(rank)))  # stable
