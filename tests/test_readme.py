"""The README's code examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_layers_example_runs():
  namespace = {}
  exec(_python_blocks()[0], namespace)  # noqa: S102 - our own README
  assert namespace["out"].shape == (2, 16, 64)
  assert namespace["h"].shape == (2, 16, 4, 64)


def test_lm_example_runs():
  import jax.numpy as jnp
  from flax import nnx

  namespace = {"tokens": jnp.zeros((1, 8), jnp.int32), "nnx": nnx}
  exec(_python_blocks()[1], namespace)  # noqa: S102
  assert namespace["logits"].shape == (1, 8, 256)
