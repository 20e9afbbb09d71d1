"""Benchmark the Sinkhorn gradient modes: forward+backward time and memory, ratios vs autodiff.

    python experiments/bench_sinkhorn.py [--tokens 1048576] [--n 4] [--iters 20] [--repeats 10]

For T tokens of N x N logits it reports, per gradient mode:
  * the median time of a jitted forward+backward (modes interleaved, so noise hits all alike);
  * the residual bytes kept between forward and backward (what a real network holds per layer);
  * XLA's peak scratch memory of the compiled forward+backward program;
  * the gradient's max abs error against autodiff (the implicit mode's truncation error).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from mhc_jax.ops import GRAD_MODES, sinkhorn_knopp


def _saved_bytes(f, x) -> int:
  _, vjp_fn = jax.vjp(f, x)
  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(vjp_fn) if isinstance(a, jax.Array))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, default=2**20)
  parser.add_argument("--n", type=int, default=4)
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()

  key_l, key_w = jax.random.split(jax.random.PRNGKey(0))
  shape = (args.tokens, args.n, args.n)
  logits = jax.random.normal(key_l, shape, jnp.float32)
  weights = jax.random.normal(key_w, shape, jnp.float32)  # a random cotangent, not all-ones

  fns, stats = {}, {}
  for mode in GRAD_MODES:
    sk = lambda l, mode=mode: sinkhorn_knopp(l, args.iters, grad=mode)
    fn = jax.jit(jax.value_and_grad(lambda l, sk=sk: jnp.sum(sk(l) * weights)))
    compiled = fn.lower(logits).compile()
    mem = compiled.memory_analysis()
    fns[mode] = compiled
    stats[mode] = {
        "saved": _saved_bytes(sk, logits),
        "temp": getattr(mem, "temp_size_in_bytes", float("nan")),
        "grad": compiled(logits)[1],
        "times": [],
    }
  for _ in range(args.repeats):
    for mode in GRAD_MODES:
      start = time.perf_counter()
      jax.block_until_ready(fns[mode](logits))
      stats[mode]["times"].append(time.perf_counter() - start)

  ref = stats["autodiff"]
  ref_time = statistics.median(ref["times"])
  mib = 2.0**20
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"T={args.tokens} tokens of {args.n}x{args.n}, {args.iters} iterations, "
        f"forward+backward, median of {args.repeats}")
  print(f"{'mode':>9} | {'time ms':>8} {'x autodiff':>10} | {'saved MiB':>9} {'x autodiff':>10} | "
        f"{'peak scratch MiB':>16} {'x autodiff':>10} | {'max |grad - autodiff|':>21}")
  for mode in GRAD_MODES:
    s = stats[mode]
    t = statistics.median(s["times"])
    err = float(jnp.max(jnp.abs(s["grad"] - ref["grad"])))
    print(f"{mode:>9} | {t * 1e3:8.1f} {t / ref_time:10.2f} | {s['saved'] / mib:9.1f} "
          f"{s['saved'] / ref['saved']:10.3f} | {s['temp'] / mib:16.1f} {s['temp'] / ref['temp']:10.2f} | "
          f"{err:21.3e}")


if __name__ == "__main__":
  main()
