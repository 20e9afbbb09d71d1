"""The README's code examples run as written, and from a wheel installed outside the repo."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from mhc_jax import ops

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _python_block(containing: str) -> str:
  blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if containing in b]
  assert len(blocks) == 1, f"expected one README example containing {containing!r}"
  return blocks[0]


def test_layers_example_runs():
  namespace = {}
  exec(_python_block("ManifoldHyperConnection"), namespace)  # noqa: S102 - our own README
  assert namespace["out"].shape == (2, 16, 64)
  assert namespace["h"].shape == (2, 16, 4, 64)


def test_two_call_example_is_one_connection():
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k[0], (5, 4, 16))
  phi = 0.1 * jax.random.normal(k[1], (64, ops.num_coefficients(4)))
  alpha, bias = jnp.full((3,), 0.5), jax.random.normal(k[2], (ops.num_coefficients(4),))
  namespace = {"x": x, "phi": phi, "alpha": alpha, "bias": bias, "F": jnp.tanh}
  exec(_python_block("connection_post"), namespace)  # noqa: S102
  h_pre, h_post, h_res = ops.mhc_coefficients(x, phi, alpha, bias)
  want = ops.mhc_post(x, jnp.tanh(ops.mhc_pre(x, h_pre)), h_post, h_res)
  np.testing.assert_allclose(namespace["x_next"], want, rtol=1e-5, atol=1e-6)


def test_lm_example_runs():
  from flax import nnx

  namespace = {"tokens": jnp.zeros((1, 8), jnp.int32), "nnx": nnx}
  exec(_python_block("TransformerLM"), namespace)  # noqa: S102
  assert namespace["logits"].shape == (1, 8, 256)


def test_the_layers_example_runs_from_an_installed_wheel(tmp_path):
  """``pip wheel .`` into a fresh venv outside the repo: the example runs, on the C++ kernels.

  The venv sees this environment's packages (jax, flax, ...) through a .pth file, but not
  the repo or its editable install. The kernel cache is the shared one: the library built
  from the repo's sources is found only if the wheel ships every source file unchanged.
  """
  wheels = tmp_path / "wheels"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                  "-w", str(wheels), str(REPO)], check=True, capture_output=True)
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  deps = [p for p in sys.path if p.endswith("site-packages")]
  (pathlib.Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
  wheel = next(wheels.glob("mhc_jax-*.whl"))
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site,
                  str(wheel)], check=True, capture_output=True)
  code = _python_block("ManifoldHyperConnection") + textwrap.dedent("""
      import mhc_jax
      from mhc_jax.ops import dispatch
      from mhc_jax.ops.cpu import build
      print(mhc_jax.__file__)
      print(dispatch.select("auto", ("mhc_maps", "pre", "post"), h).NAME, build.is_built())
  """)
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  out = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True,
                       text=True)
  where, picked = out.stdout.strip().splitlines()[-2:]
  assert where.startswith(site) and REPO.as_posix() not in where
  assert picked == "cpu True", out.stderr
  assert "compiling" not in out.stderr  # the wheel's sources hash to the library already built
