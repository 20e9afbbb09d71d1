"""Test setup: CPU only, 8 fake devices (set before JAX initializes its backends)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs the test body with float64 enabled."""
  with jax.enable_x64(True):
    yield


def test_eight_fake_devices():
  assert jax.device_count() == 8
