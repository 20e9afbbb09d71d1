"""Runs the Triton kernels of ``mhc_jax/ops/triton_kernels/kernels.py`` in Triton's interpreter.

    TRITON_INTERPRET=1 python tests/ops/triton_interpret.py CASES.pkl RESULTS.pkl

The CPU twin of the GPU launches: the same ``@triton.jit`` kernels with the same block sizes
and argument order as ``mhc_jax.ops.triton_kernels``, on host numpy arrays. Each case is
``{"op": name, "n": N, "args": [arrays]}``; the results are the kernels' output arrays. It
loads kernels.py by path, so neither JAX nor mhc_jax is imported here.
"""

import importlib.util
import os
import pathlib
import pickle
import sys

import numpy as np

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before Triton is imported"
np.seterr(divide="ignore", invalid="ignore")  # 0/0 on the masked padding of N x N tiles, discarded
_PATH = pathlib.Path(__file__).resolve().parents[2] / "mhc_jax/ops/triton_kernels/kernels.py"
_spec = importlib.util.spec_from_file_location("kernels", _PATH)
kernels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernels)


class HostTensor:
  """The few tensor methods Triton's interpreter calls on an argument, over a numpy array."""

  def __init__(self, a: np.ndarray):
    self.a, self.dtype = a, a.dtype

  def data_ptr(self):
    return self.a.ctypes.data

  def untyped_storage(self):
    return self

  def cpu(self):
    return self

  def copy_(self, other):
    pass

  def new_empty(self, *args, **kwargs):
    return self

  def set_(self, *args, **kwargs):
    return self

  def storage_offset(self):
    return 0

  def size(self):
    return self.a.shape

  def stride(self):
    return tuple(s // self.a.itemsize for s in self.a.strides)


def _launch(kernel, grid, inputs, scalars, outputs, **params):
  args = [HostTensor(np.ascontiguousarray(a)) for a in inputs] + list(scalars)
  kernel[(grid,)](*args, *[HostTensor(o) for o in outputs], **params)
  return outputs


def run(case):
  op, n, args = case["op"], case["n"], case["args"]
  t = args[0].shape[0]
  if op.startswith("sinkhorn"):
    np_, block_t = kernels.sinkhorn_blocks(n)
    out = [np.zeros_like(args[0], np.float32)]
    kernel = kernels.sinkhorn_fwd_kernel if op == "sinkhorn_fwd" else kernels.sinkhorn_bwd_kernel
    return _launch(kernel, -(-t // block_t), args, [t], out, N=n, NP=np_, ITERS=case["num_iters"],
                   EPS=case["eps"], BLOCK_T=block_t)
  x, y = args[0], args[1]
  c = y.shape[1]
  np_, block_t, block_c = kernels.post_blocks(n, c)
  blocks = dict(N=n, NP=np_, BLOCK_T=block_t, BLOCK_C=block_c)
  if op == "post_fwd":
    return _launch(kernels.post_fwd_kernel, -(-t // block_t), args, [t, c], [np.zeros_like(x)], **blocks)
  out = [np.zeros_like(x), np.zeros_like(y), np.zeros((t, n), np.float32), np.zeros((t, n * n), np.float32)]
  return _launch(kernels.post_bwd_kernel, -(-t // block_t), args, [t, c], out, **blocks)


if __name__ == "__main__":
  cases = pickle.loads(pathlib.Path(sys.argv[1]).read_bytes())
  pathlib.Path(sys.argv[2]).write_bytes(pickle.dumps([run(c) for c in cases]))
