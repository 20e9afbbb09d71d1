"""Time every implementation of the three mHC ops against the memory-traffic floor.

    python experiments/bench_kernels.py [--shapes 16384x4x4096 ...] [--dtype bfloat16]
                                        [--impls xla pallas] [--repeats 20] [--out runs/bench_kernels]

For each shape ``T x n x C`` (tokens, streams, width), op (coefficients, pre, post),
implementation and mode it jits the public op (``mhc_jax.ops``) and takes the median time:

  * ``fwd``: the op alone;
  * ``fwd+bwd``: the outputs and the VJP of random cotangents, in one jitted function.

The ``triton`` implementation covers the Sinkhorn (inside the coefficients) and post only,
so it has no ``pre`` row. ``cpu`` is the C++ kernels (XLA:CPU custom calls).

The floor is the memory-traffic limit of docs/math.md §5: every input read once and every output
written once (for ``fwd+bwd``, also the cotangents and the gradients), e.g. ``(n+1)C``
elements per token for the pre-apply forward. ``GB/s`` is floor bytes over time, and
``of copy`` divides it by the device's measured copy bandwidth (an ``a + 1`` over a large
array, read and write). The bare ``v @ phi`` GEMM is timed too: the coefficient kernel's
target is < 1.5x its time. Writes ``kernels.csv`` and ``kernels.png`` to ``--out``; the CSV
gets each row as soon as it is measured (the copy bandwidth first), so a run stopped early keeps
what it finished. A case that raises is reported and skipped; the script then exits with status 1.

Default implementations: xla and cpu on a CPU; xla, pallas (and triton when jax-triton is
installed) on a GPU. On a CPU the Pallas kernels run in interpret mode (``--impls pallas``):
correct numbers, but their timings mean nothing (each program is simulated op by op).
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mhc_jax import ops
from mhc_jax.ops import dispatch

GPU_SHAPES = ["16384x4x4096", "16384x4x2048", "4096x4x4096", "16384x2x4096", "8192x8x2048"]
CPU_SHAPES = ["4096x4x256", "1024x4x512"]
OPS = ("coefficients", "pre", "post")
BACKEND_OPS = {"coefficients": "mhc_maps", "pre": "pre", "post": "post"}  # public op -> backend op


def _median_s(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _nbytes(tree) -> int:
  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))


def copy_bandwidth(repeats: int, mib: int) -> float:
  """Bytes/s of ``a + 1`` over a ``mib`` MiB fp32 array (one read and one write per element)."""
  a = jnp.zeros((mib * 2**20 // 4,), jnp.float32)
  return 2 * a.nbytes / _median_s(jax.jit(lambda a: a + 1), (a,), repeats)


def _inputs(t: int, n: int, c: int, dtype):
  k = jax.random.split(jax.random.PRNGKey(0), 8)
  kk = ops.num_coefficients(n)
  return {
      "x": jax.random.normal(k[0], (t, n, c)).astype(dtype),
      "y": jax.random.normal(k[1], (t, c)).astype(dtype),
      "phi": jax.random.normal(k[2], (n * c, kk)) / np.sqrt(n * c),
      "alpha": jnp.array([0.5, 0.5, 1.0]),
      "bias": 0.1 * jax.random.normal(k[3], (kk,)),
      "h_pre": jax.random.uniform(k[4], (t, n)),
      "h_post": 2 * jax.random.uniform(k[5], (t, n)),
      "h_res": jax.nn.softmax(jax.random.normal(k[6], (t, n, n)), axis=-1),
  }


def _op(name: str, impl: str, inp):
  """(function, its differentiable arguments) for one public op."""
  if name == "coefficients":
    return (lambda x, phi, alpha, bias: ops.mhc_coefficients(x, phi, alpha, bias, implementation=impl),
            (inp["x"], inp["phi"], inp["alpha"], inp["bias"]))
  if name == "pre":
    return lambda x, h: ops.mhc_pre(x, h, implementation=impl), (inp["x"], inp["h_pre"])
  return (lambda x, y, hp, hr: ops.mhc_post(x, y, hp, hr, implementation=impl),
          (inp["x"], inp["y"], inp["h_post"], inp["h_res"]))


def _timed(fn, args, mode: str, repeats: int) -> tuple[float, int]:
  """(seconds, floor bytes) of ``fn`` in ``mode``."""
  out = jax.eval_shape(fn, *args)
  if mode == "fwd":
    return _median_s(jax.jit(fn), args, repeats), _nbytes(args) + _nbytes(out)
  keys = jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(out)))
  cot = jax.tree.unflatten(jax.tree.structure(out), [
      jax.random.normal(k, o.shape).astype(o.dtype) for k, o in zip(keys, jax.tree.leaves(out))])

  def fwd_bwd(args, cot):
    y, vjp = jax.vjp(fn, *args)
    return y, vjp(cot)

  seconds = _median_s(jax.jit(fwd_bwd), (args, cot), repeats)
  return seconds, 2 * _nbytes(args) + 2 * _nbytes(out)  # inputs + grads, outputs + cotangents


FIELDS = ("device", "shape", "dtype", "op", "impl", "mode", "ms", "floor_MB", "GBps", "of_copy",
          "x_xla", "x_gemm")


class RowWriter:
  """Appends rows to ``kernels.csv`` as they are measured (flushed, so a killed run keeps them)."""

  def __init__(self, path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    self.path, self.rows = path, []
    self._file = open(path, "w", newline="")
    self._csv = csv.DictWriter(self._file, fieldnames=FIELDS)
    self._csv.writeheader()
    self._file.flush()

  def add(self, row: dict) -> None:
    self.rows.append(row)
    self._csv.writerow(row)
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def run(args, writer: RowWriter) -> list[str]:
  """Measures every case into ``writer``; returns one message per case that raised."""
  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  shapes = args.shapes or (CPU_SHAPES if on_cpu else GPU_SHAPES)
  if on_cpu and "pallas" in args.impls:
    print("NOTE: on a CPU the Pallas kernels run in interpret mode; their timings mean nothing.")
  copy_mib = 64 if on_cpu else 1024
  copy_bw = copy_bandwidth(args.repeats, copy_mib)
  print(f"device: {device.device_kind}, copy bandwidth {copy_bw / 1e9:.1f} GB/s")
  copy_bytes = 2 * copy_mib * 2**20
  writer.add(_row(device, f"{copy_mib}MiB", jnp.dtype(jnp.float32), "copy a+1", "xla", "fwd",
                  copy_bytes / copy_bw, copy_bytes, copy_bw))
  dtype = jnp.dtype(args.dtype)
  impls = sorted(args.impls, key=lambda i: i != "xla")  # xla first: the others' ratios need it
  for impl in impls:
    dispatch.prepare(impl)  # builds the C++ kernels before anything is traced
  cases = [(op, impl, mode) for op in OPS for impl in impls for mode in ("fwd", "fwd+bwd")
           if BACKEND_OPS[op] in dispatch.backend(impl).OPS]
  bar = tqdm(total=len(shapes) * len(cases), desc="kernels", unit="case")
  failures = []
  for shape in shapes:  # one shape's arrays alive at a time
    t, n, c = map(int, shape.split("x"))
    inp = _inputs(t, n, c, dtype)
    v = inp["x"].reshape(t, n * c)
    gemm_s = _median_s(jax.jit(lambda v, phi: jnp.dot(v.astype(jnp.float32), phi)), (v, inp["phi"]),
                       args.repeats)
    writer.add(_row(device, shape, dtype, "v@phi GEMM", "xla", "fwd", gemm_s,
                    _nbytes((v, inp["phi"])) + t * ops.num_coefficients(n) * 4, copy_bw))
    xla_ms = {}
    for op, impl, mode in cases:
      try:
        secs, floor = _timed(*_op(op, impl, inp), mode, args.repeats)
      except Exception as e:  # noqa: BLE001 -- one broken kernel must not hide the others' figures
        failures.append(f"{shape} {op} {impl} {mode}: {type(e).__name__}: {e}")
        print(f"FAILED {failures[-1]}", flush=True)
        bar.update()
        continue
      row = _row(device, shape, dtype, op, impl, mode, secs, floor, copy_bw)
      if impl == "xla":
        xla_ms[(op, mode)] = row["ms"]
      ref = xla_ms.get((op, mode))
      row["x_xla"] = round(row["ms"] / ref, 3) if ref else ""
      row["x_gemm"] = round(secs / gemm_s, 3) if op == "coefficients" else ""
      writer.add(row)
      bar.update()
    del inp, v
  bar.close()
  return failures


def _row(device, shape, dtype, op, impl, mode, secs, floor, copy_bw) -> dict:
  return {"device": device.device_kind, "shape": shape, "dtype": dtype.name, "op": op, "impl": impl,
          "mode": mode, "ms": round(secs * 1e3, 4), "floor_MB": round(floor / 1e6, 2),
          "GBps": round(floor / secs / 1e9, 1), "of_copy": round(floor / secs / copy_bw, 3),
          "x_xla": "", "x_gemm": ""}


def report(rows: list[dict], out: pathlib.Path) -> None:
  """Prints the table and plots ``kernels.png`` (the CSV is already written)."""
  header = f"{'shape':>14} {'op':>12} {'mode':>8} {'impl':>7} {'ms':>9} {'GB/s':>7} {'of copy':>7} {'x xla':>6} {'x gemm':>6}"
  print(header)
  for r in rows:
    print(f"{r['shape']:>14} {r['op']:>12} {r['mode']:>8} {r['impl']:>7} {r['ms']:9.3f} {r['GBps']:7.1f} "
          f"{r['of_copy']:7.3f} {r['x_xla']!s:>6} {r['x_gemm']!s:>6}")
  _plot(rows, out / "kernels.png")
  print(f"wrote {out / 'kernels.csv'} and {out / 'kernels.png'}")


def _plot(rows: list[dict], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  shapes = list(dict.fromkeys(r["shape"] for r in rows if r["op"] in OPS))
  if not shapes:
    return
  impls = list(dict.fromkeys(r["impl"] for r in rows if r["op"] in OPS))
  cases = [(op, mode) for op in OPS for mode in ("fwd", "fwd+bwd")]
  fig, axes = plt.subplots(len(shapes), 1, figsize=(9, 3 * len(shapes)), squeeze=False)
  width = 0.8 / len(impls)
  for ax, shape in zip(axes[:, 0], shapes):
    for i, impl in enumerate(impls):
      vals = [next((r["of_copy"] for r in rows if (r["shape"], r["op"], r["mode"], r["impl"]) ==
                    (shape, op, mode, impl)), 0.0) for op, mode in cases]
      ax.bar(np.arange(len(cases)) + i * width, vals, width, label=impl)
    ax.axhline(0.7, color="gray", ls="--", lw=1, label="70% target")
    ax.set_xticks(np.arange(len(cases)) + width * (len(impls) - 1) / 2,
                  [f"{op}\n{mode}" for op, mode in cases])
    ax.set_ylabel("floor bytes/s ÷ copy")
    ax.set_title(f"T x n x C = {shape} ({rows[0]['dtype']}, {rows[0]['device']})")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", nargs="+", help="T x n x C, e.g. 16384x4x4096 (default: by backend)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--impls", nargs="+", choices=[i for i in ops.IMPLEMENTATIONS if i != "auto"],
                      help="default: xla and cpu on a CPU; xla, pallas (and triton if installed) on a GPU")
  parser.add_argument("--repeats", type=int, default=20, help="timed calls per case (median)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench_kernels"))
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error(f"--repeats: expected a positive count, got {args.repeats}")
  for s in args.shapes or []:
    if len(s.split("x")) != 3 or not all(p.isdigit() and int(p) > 0 for p in s.split("x")):
      parser.error(f"--shapes: expected T x n x C like 16384x4x4096, got {s!r}")
  if args.impls is None:
    args.impls = ["xla"] + (["cpu"] if jax.default_backend() == "cpu" else
                            ["pallas"] + (["triton"] if _triton_available() else []))
  writer = RowWriter(args.out / "kernels.csv")
  try:
    failures = run(args, writer)
  finally:
    writer.close()
  report(writer.rows, args.out)
  if failures:
    print(f"{len(failures)} case(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)


def _triton_available() -> bool:
  return dispatch.backend("triton").unavailable(allow_build=False) is None


if __name__ == "__main__":
  main()
