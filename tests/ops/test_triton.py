"""The jax-triton implementation (``implementation="triton"``) on a machine without a GPU.

jax-triton has no CPU mode, so the CPU twin is in two parts, each in a subprocess that sees
the Triton tooling ``make test`` installs apart from the main environment (MHC_TRITON_PATH):

* numerics: the same ``@triton.jit`` kernels, block sizes and argument order run in Triton's
  interpreter (tests/ops/triton_interpret.py) against the plain equations, forward and VJP
  with random cotangents, for n in {1, 2, 3, 4, 8} (3: padded tiles), ragged T and C, fp32 and
  fp16 streams (numpy has no bf16; the bf16 path is covered by the lowering);
* lowering: the public ops lower to jax-triton kernel calls for CUDA, plain and under remat.

The public ops refuse "triton" on a CPU backend, and a missing jax-triton says how to install it.
On a GPU the whole kernel mixin suite of test_kernels.py runs for "triton" too.
"""

import os
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc_jax import ops
from mhc_jax.ops import reference, triton_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLING = os.environ.get("MHC_TRITON_PATH")
needs_tooling = pytest.mark.skipif(
    not TOOLING, reason="the Triton tooling is installed and passed by `make test` (MHC_TRITON_PATH)")


def _subprocess(args, **env):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TOOLING, ROOT]), JAX_PLATFORMS="cpu", **env)
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------ interpreter

SINKHORN_N = [1, 2, 3, 4, 8]
POST_SHAPES = [(1, 37), (2, 300), (3, 37), (4, 300), (8, 37)]
POST_DTYPES = [np.float32, np.float16]
T = 6


def _sinkhorn_case(n):
  rng = np.random.default_rng(n)
  logits = (2 * rng.normal(size=(37, n * n))).astype(np.float32)  # 37 tokens: ragged blocks
  g = rng.normal(size=(37, n * n)).astype(np.float32)
  common = {"n": n, "num_iters": 20, "eps": 1e-6}
  return [{"op": "sinkhorn_fwd", "args": [logits], **common},
          {"op": "sinkhorn_bwd", "args": [logits, g], **common}]


def _post_case(n, c, dtype):
  rng = np.random.default_rng(10 * n + c)
  x = rng.normal(size=(T, n * c)).astype(dtype)
  y = rng.normal(size=(T, c)).astype(dtype)
  h_post = (2 * rng.uniform(size=(T, n))).astype(np.float32)
  h_res = rng.dirichlet(np.ones(n), size=(T, n)).reshape(T, n * n).astype(np.float32)
  g = rng.normal(size=(T, n * c)).astype(dtype)
  return [{"op": "post_fwd", "n": n, "args": [x, y, h_post, h_res]},
          {"op": "post_bwd", "n": n, "args": [x, y, h_post, h_res, g]}]


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
  """Every case through the interpreter in one subprocess: {case key: (case, outputs)}."""
  keyed = {("sinkhorn", n): _sinkhorn_case(n) for n in SINKHORN_N}
  keyed |= {("post", n, c, np.dtype(d).name): _post_case(n, c, d) for n, c in POST_SHAPES for d in POST_DTYPES}
  cases = [c for pair in keyed.values() for c in pair]
  tmp = tmp_path_factory.mktemp("triton")
  (tmp / "cases.pkl").write_bytes(pickle.dumps(cases))
  run = _subprocess([os.path.join(ROOT, "tests/ops/triton_interpret.py"), str(tmp / "cases.pkl"),
                     str(tmp / "out.pkl")], TRITON_INTERPRET="1")
  assert run.returncode == 0, run.stderr[-4000:]
  outs = iter(pickle.loads((tmp / "out.pkl").read_bytes()))
  return {key: [(c, next(outs)) for c in pair] for key, pair in keyed.items()}


def _close(got, want, dtype, tol=2e-5):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  if dtype == np.float16:
    tol = 2 ** -10
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@needs_tooling
@pytest.mark.parametrize("n", SINKHORN_N)
def test_sinkhorn_kernels_match_reference(interpreted, n, x64):
  (fwd, (p,)), (bwd, (g_logits,)) = interpreted[("sinkhorn", n)]
  logits, g = (jnp.asarray(a, jnp.float64).reshape(-1, n, n) for a in bwd["args"])
  ref = lambda l: reference.sinkhorn_reference(l, fwd["num_iters"], fwd["eps"])
  want, vjp = jax.vjp(ref, logits)
  _close(p.reshape(-1, n, n), want, np.float32)
  _close(g_logits.reshape(-1, n, n), vjp(g)[0], np.float32, tol=1e-4)


@needs_tooling
@pytest.mark.parametrize("n, c", POST_SHAPES)
@pytest.mark.parametrize("dtype", POST_DTYPES)
def test_post_kernels_match_reference(interpreted, n, c, dtype):
  (fwd, (out,)), (bwd, grads) = interpreted[("post", n, c, np.dtype(dtype).name)]
  x, y, h_post, h_res, g = (jnp.asarray(a, jnp.float32) for a in bwd["args"])
  args = (x.reshape(T, n, c), y, h_post, h_res.reshape(T, n, n))
  want, vjp = jax.vjp(reference.mhc_post_reference, *args)
  assert out.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == dtype
  _close(out.reshape(T, n, c), want, dtype)
  for got, w in zip(grads, vjp(g.reshape(T, n, c))):
    _close(np.asarray(got, np.float32).reshape(w.shape), w, dtype if got.dtype == dtype else np.float32)


# ---------------------------------------------------------------------- lowering

_LOWER = textwrap.dedent("""
    import re, jax, jax.numpy as jnp
    from mhc_jax import ops
    from mhc_jax.ops import triton_kernels as tk

    def block(x, y, logits, h_post):
      h_res = tk.sinkhorn(logits, 20, 1e-6)
      return jnp.sum(tk.post(x, y, h_post, h_res) ** 2)

    for dtype in (jnp.bfloat16, jnp.float32):
      args = (jnp.ones((6, 4, 300), dtype), jnp.ones((6, 300), dtype), jnp.zeros((6, 4, 4)), jnp.ones((6, 4)))
      for remat in (False, True):
        f = jax.value_and_grad(jax.checkpoint(block) if remat else block, argnums=(0, 1, 2, 3))
        text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        print(dtype.__name__, remat, text.count("stablehlo.custom_call @triton_kernel_call"))
""")


@needs_tooling
def test_kernels_lower_to_triton_calls_for_cuda():
  """Sinkhorn fwd/bwd + post fwd/bwd: 4 kernel calls; under remat the 2 forwards run twice."""
  run = _subprocess(["-c", _LOWER])
  assert run.returncode == 0, run.stderr[-4000:]
  counts = [line.split() for line in run.stdout.splitlines()]
  assert counts == [["bfloat16", "False", "4"], ["bfloat16", "True", "6"],
                    ["float32", "False", "4"], ["float32", "True", "6"]], run.stdout


# ------------------------------------------------------------------------ errors


def test_triton_is_refused_on_cpu_with_a_clear_error():
  with pytest.raises(ValueError, match="implementation='triton' runs on GPUs only.*'cpu'"):
    ops.mhc_post(jnp.ones((2, 4, 8)), jnp.ones((2, 8)), jnp.ones((2, 4)), jnp.ones((2, 4, 4)),
                 implementation="triton")


def test_missing_jax_triton_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "jax_triton", None)  # makes `import jax_triton` fail
  with pytest.raises(ImportError, match=r"pip install 'mhc_jax\[triton\]'"):
    triton_kernels.modules()
