"""The dispatcher: what "auto" picks, what a named backend refuses, and what importing loads."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc_jax import ops
from mhc_jax.ops import dispatch

CUSTOM_CALL = "mhc_jax_pre_fwd"  # the C++ pre kernel's FFI target


def _pre_hlo(x, implementation="auto"):
  f = jax.jit(lambda x: ops.mhc_pre(x, jnp.ones(x.shape[:-1]), implementation=implementation))
  return f.lower(x).as_text()


@pytest.fixture(scope="module")
def cpu_built():
  reason = dispatch.backend("cpu").unavailable(allow_build=True)
  if reason is not None:
    pytest.skip(reason)


def test_auto_picks_the_cpu_kernels_for_fp32_streams_on_one_device(cpu_built):
  x = jnp.ones((4, 4, 8))
  assert CUSTOM_CALL in _pre_hlo(x)
  assert CUSTOM_CALL not in _pre_hlo(x.astype(jnp.bfloat16))  # bf16: XLA (software bf16 on CPUs)
  assert CUSTOM_CALL not in _pre_hlo(jnp.ones((4, 9, 8)))  # N > 8
  assert CUSTOM_CALL not in _pre_hlo(x, "xla")
  pick = lambda x, **kw: dispatch.select("auto", ("mhc_maps",), x, ops.MHCConfig(4, **kw)).NAME
  assert pick(x) == "cpu"
  assert pick(x, sinkhorn_grad="implicit") == "xla"  # the kernels' Sinkhorn VJP is the exact one


def test_auto_reads_the_mesh_not_the_device_count(cpu_built):
  """8 devices here: a one-device program runs the kernels as they are, one on a mesh runs them
  per token shard when the tokens split evenly, and XLA's ops when they do not."""
  assert jax.device_count() == 8
  x = jnp.ones((8, 4, 8))
  assert "shard_map" not in str(jax.make_jaxpr(lambda x: ops.mhc_pre(x, jnp.ones(x.shape[:-1])))(x))
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    assert CUSTOM_CALL in _pre_hlo(x)
    assert "shard_map" in str(jax.make_jaxpr(lambda x: ops.mhc_pre(x, jnp.ones(x.shape[:-1])))(x))
    assert CUSTOM_CALL not in _pre_hlo(x[:6])  # 6 tokens over 8 devices
    assert CUSTOM_CALL not in _pre_hlo(x, "xla")  # XLA's ops, placed by the partitioner
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  assert dispatch.select("auto", ("pre",), sharded).NAME == "cpu"
  assert dispatch.select("auto", ("pre",), x).NAME == "cpu"


@pytest.mark.parametrize("implementation, ops_, x, match", [
    ("pallas", ("hc_maps",), jnp.ones((2, 4, 8)), "'pallas' has no kernel for hc_maps"),
    ("cpu", ("pre",), jnp.ones((2, 9, 8)), "1 <= N <= 8"),
    ("pallas", ("mhc_maps",), jnp.ones((2, 4, 8)), "sinkhorn_grad='implicit' needs implementation='xla'"),
])
def test_a_named_backend_refuses_what_it_cannot_run(implementation, ops_, x, match):
  cfg = ops.MHCConfig(x.shape[-2], sinkhorn_grad="implicit")
  with pytest.raises(ValueError, match=match):
    dispatch.select(implementation, ops_, x, cfg)


def test_triton_is_refused_off_gpu_and_the_layers_check_at_construction():
  with pytest.raises(ValueError, match="runs on GPUs only"):
    ops.mhc_pre(jnp.ones((2, 4, 8)), jnp.ones((2, 4)), implementation="triton")
  with pytest.raises(ValueError, match="implementation='cuda'"):
    ops.check_implementation("cuda")
  assert np.array_equal(ops.mhc_pre(jnp.ones((2, 4, 8)), jnp.ones((2, 4)), implementation="xla"),
                        4 * jnp.ones((2, 8)))


def _run(code: str, **env) -> subprocess.CompletedProcess:
  base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=base | env,
                        capture_output=True, text=True, check=True)


def test_importing_the_package_loads_no_kernel_module_and_builds_nothing(tmp_path):
  out = _run("""
      import sys
      import flax.nnx, jax.numpy  # what they load themselves is not ours
      before = set(sys.modules)
      import mhc_jax, mhc_jax.ops, mhc_jax.layers, mhc_jax.models
      new = sorted(set(sys.modules) - before)
      print(" ".join(m for m in new if "pallas" in m or "triton" in m or ".backends." in m))
  """, MHC_JAX_CACHE=str(tmp_path))
  assert out.stdout.split() == []
  assert list(tmp_path.iterdir()) == []


def test_the_cpu_kernels_are_never_built_inside_a_trace(tmp_path):
  """An empty kernel cache: "auto" runs XLA in a trace (and says so), "cpu" names the build step."""
  out = _run("""
      import warnings, jax, jax.numpy as jnp
      from mhc_jax import ops
      x = jnp.ones((4, 4, 8))
      pre = lambda impl: jax.jit(lambda x: ops.mhc_pre(x, jnp.ones((4, 4)), implementation=impl))
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = pre("auto").lower(x).as_text()
      print("custom_call" in text and "mhc_jax" in text, len(caught), "build" in str(caught[0].message))
      try:
        pre("cpu").lower(x)
      except RuntimeError as e:
        print("python -m mhc_jax.ops.cpu build" in str(e))
  """, MHC_JAX_CACHE=str(tmp_path))
  assert out.stdout.split() == ["False", "1", "True", "True"]
  assert not any(p.suffix == ".so" for p in tmp_path.rglob("*"))
