"""keep_freed_memory: XLA:CPU's big per-call buffers stop costing page faults on every call."""

import os
import subprocess
import sys
import textwrap

import pytest

# A jitted op whose 64 MiB output is allocated on every call and freed before the next one;
# prints the minor page faults of each of 10 calls after a warm-up (the heap takes a few
# calls to settle: an aligned allocation does not always fit the block just freed).
_CODE = textwrap.dedent("""
    import resource, sys
    from mhc_jax.train import host
    applied = host.keep_freed_memory() if sys.argv[1] == "keep" else None
    import jax, jax.numpy as jnp
    x = jnp.ones((4096, 4096), jnp.float32)
    f = jax.jit(lambda x: x * 2.0)
    faults = []
    for _ in range(20):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, *faults[10:])
""")
PAGES_PER_CALL = 64 * 2**20 // 4096


def _median_faults(mode):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _CODE, mode], env=env, capture_output=True, text=True,
                       check=True)
  applied, *faults = out.stdout.split()
  return applied, sorted(map(int, faults))[len(faults) // 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_buffers_are_reused_without_page_faults():
  applied, faults = _median_faults("keep")
  assert applied == "True"
  assert faults < PAGES_PER_CALL // 10, faults
  # The control: by default each call maps its output afresh and faults on every page.
  _, default_faults = _median_faults("default")
  assert default_faults > PAGES_PER_CALL * 9 // 10, default_faults
