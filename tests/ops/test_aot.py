"""Every GPU kernel compiled to machine code for an H200 (sm_90) on this CPU machine.

``mhc_jax.ops.aot`` lowers the Pallas kernels for CUDA under an abstract H200 and compiles
the Triton IR they embed, and compiles the jax-triton kernels from their source, each down
to a cubin with Triton's compiler and bundled ptxas; the cubin's registers and shared memory
must fit a Hopper block. Shapes of the GPU configs: C = 4096, n = 4 and 8, bf16 and fp32.
At n = 8 the two coefficient kernels are left out: their unrolled per-token Sinkhorn takes
Triton over 7 minutes to compile on this machine (docs/gpu.md lists their figures from
``python -m mhc_jax.ops.aot``). Runs in a subprocess that sees the Triton tooling
``make test`` installs (MHC_TRITON_PATH).
"""

import json

import pytest

from mhc_jax.ops import aot
from tests.ops.test_triton import _subprocess, needs_tooling

PALLAS_STREAM = {"_pre_fwd_kernel", "_pre_bwd_kernel", "_post_fwd_kernel", "_post_bwd_kernel"}
PALLAS_COEF = {"_coef_fwd_kernel", "_coef_bwd_kernel"}
TRITON = {"sinkhorn_fwd_kernel", "sinkhorn_bwd_kernel", "post_fwd_kernel", "post_bwd_kernel"}
DTYPES = ["bfloat16", "float32"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
  """{(n, dtype): {kernel: build}} from two runs of the CLI."""
  tmp = tmp_path_factory.mktemp("aot")
  runs = {4: [], 8: ["--exclude", *sorted(PALLAS_COEF)]}
  out = {}
  for n, extra in runs.items():
    path = tmp / f"n{n}.json"
    run = _subprocess(["-m", "mhc_jax.ops.aot", "--gpu", "H200", "--n", str(n), "--c", "4096",
                       "--dtypes", *DTYPES, "--json", str(path), *extra])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for b in json.loads(path.read_text()):
      out.setdefault((n, b["case"].split()[-1]), {})[b["kernel"]] = b
  return out


@needs_tooling
@pytest.mark.parametrize("n", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_compiles_for_sm90_and_fits_a_block(builds, n, dtype):
  built = builds[(n, dtype)]
  want = PALLAS_STREAM | TRITON | (PALLAS_COEF if n == 4 else set())
  assert set(built) == want
  for name, b in built.items():
    assert b["cubin_bytes"] > 1000 and 0 < b["registers"] <= 255, (name, b)
    assert b["problems"] == [], (name, b["problems"])


def _build(**kw):
  base = dict(impl="pallas", kernel="k", case="n=4", num_warps=4, registers=64, shared=0, local=0,
              cubin_bytes=1, seconds=0.0)
  return aot.Build(**(base | kw))


def test_launch_limits_name_what_does_not_fit():
  h200 = aot.TARGETS["H200"]
  assert aot.launch_problems(_build(), h200) == []
  assert aot.launch_problems(_build(shared=227 * 1024), h200) == []
  assert aot.launch_problems(_build(shared=227 * 1024 + 1), h200) == [
      "232449 bytes of shared memory > 232448 per block"]
  assert aot.launch_problems(_build(shared=200 * 1024), aot.TARGETS["A100"]) != []
  assert aot.launch_problems(_build(num_warps=64), h200)[0] == "2048 threads per block > 1024"
  # 255 registers x 32 threads round to 8192 per warp: 8 warps fit the 65536 of an SM, 16 do not.
  assert aot.launch_problems(_build(registers=255, num_warps=8), h200) == []
  assert "registers for 16 warps" in aot.launch_problems(_build(registers=255, num_warps=16), h200)[0]
