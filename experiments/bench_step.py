"""Train-step time of the residual, HC and mHC variants of one LM, interleaved in one process.

    python experiments/bench_step.py [--widths 256 512] [--num_layers 4] [--repeats 10] [--dtype bfloat16]
                                     [--scan_layers]

For each width it builds the three variants with the library's own train step
(``mhc_jax.train.trainer.make_train_step``: AdamW, clipping, donation), warms them up, then
times steps round-robin so machine noise hits all three alike. It prints the median step
time, tokens/s, the ratio to residual and XLA's peak scratch memory of the compiled step,
plus the residual model's forward time and its (forward+backward)/forward ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from mhc_jax import ops
from mhc_jax.models import ModelConfig
from mhc_jax.train import host, trainer
from mhc_jax.train.config import TrainConfig
from mhc_jax.train.optim import make_optimizer

CONNECTIONS = ("residual", "hc", "mhc")


def _median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def bench_width(args, width: int) -> None:
  batch = jax.random.randint(jax.random.PRNGKey(0), (args.batch_size, args.seq_len + 1), 0, 256)
  runs = {}
  for connection in CONNECTIONS:
    cfg = TrainConfig(model=ModelConfig(connection=connection, num_streams=args.n, d_model=width,
                                        num_layers=args.num_layers, num_heads=max(1, width // 64),
                                        scan_layers=args.scan_layers, dtype=args.dtype,
                                        implementation=args.implementation),
                      seq_len=args.seq_len, batch_size=args.batch_size)
    tx = make_optimizer(cfg)
    graphdef, state = trainer.init_state(cfg, tx)
    step = trainer.make_train_step(graphdef, tx)
    mem = step.lower(state, batch).compile().memory_analysis()
    for _ in range(2):  # compile and warm up
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    runs[connection] = {"step": step, "state": state, "graphdef": graphdef, "times": [],
                        "scratch_mib": getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20}
  for _ in range(args.repeats):
    for run in runs.values():
      start = time.perf_counter()
      run["state"], metrics = run["step"](run["state"], batch)
      jax.block_until_ready(metrics)
      run["times"].append(time.perf_counter() - start)

  tokens = args.batch_size * args.seq_len
  base = statistics.median(runs["residual"]["times"])
  print(f"\nwidth {width}, {args.dtype}, {args.num_layers} blocks, n = {args.n}, batch {args.batch_size} x seq "
        f"{args.seq_len}, {'scanned' if args.scan_layers else 'unrolled'} blocks, median of {args.repeats} "
        f"interleaved steps on {jax.devices()[0].device_kind}")
  print(f"{'connection':>10} | {'ms/step':>8} | {'tokens/s':>9} | {'x residual':>10} | {'peak scratch MiB':>16}")
  for name, run in runs.items():
    t = statistics.median(run["times"])
    print(f"{name:>10} | {t * 1e3:8.1f} | {tokens / t:9.0f} | {t / base:10.3f} | {run['scratch_mib']:16.1f}")

  res = runs["residual"]
  params = res["state"]["params"]
  loss = jax.jit(lambda p, b: trainer.next_token_loss(res["graphdef"], p, b))
  grad = jax.jit(jax.value_and_grad(lambda p, b: trainer.next_token_loss(res["graphdef"], p, b)))
  fwd = _median_ms(loss, params, batch, repeats=args.repeats)
  both = _median_ms(grad, params, batch, repeats=args.repeats)
  print(f"residual forward {fwd:.1f} ms, forward+backward {both:.1f} ms: ratio {both / fwd:.2f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
  parser.add_argument("--num_layers", type=int, default=4)
  parser.add_argument("--n", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="activations and stream state (parameters stay fp32)")
  parser.add_argument("--scan_layers", action="store_true",
                      help="run the blocks with lax.scan (default: unrolled, as the CPU configs do)")
  parser.add_argument("--malloc_default", action="store_true",
                      help="leave glibc's malloc settings alone (see mhc_jax.train.host)")
  parser.add_argument("--implementation", default="auto", choices=ops.IMPLEMENTATIONS,
                      help="the mHC/HC ops' backend (default: auto, the C++ kernels on one CPU)")
  args = parser.parse_args()
  if not args.malloc_default:
    host.keep_freed_memory()  # as experiments/train.py does
  ops.prepare(args.implementation)
  for width in args.widths:
    bench_width(args, width)


if __name__ == "__main__":
  main()
