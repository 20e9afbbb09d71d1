"""Train-step time of the residual, HC and mHC variants of one LM, interleaved in one process.

    python experiments/bench_step.py [--widths 256 512] [--num_layers 4] [--repeats 10] [--dtype bfloat16]
                                     [--scan_layers] [--remat] [--config configs/gpu_125m.py] [--out DIR]

For each width it builds the three variants with the library's own train step
(``mhc_jax.train.trainer.make_train_step``: AdamW, clipping, donation), compiles and warms them
up, then times steps round-robin so machine noise hits all three alike. It prints the median step
time, tokens/s, the ratio to residual and XLA's peak scratch memory of the compiled step,
plus the residual model's forward time and its (forward+backward)/forward ratio
(``--no-forward_ratio`` skips that).

``--config`` takes the model (all but its connection), ``seq_len`` and ``batch_size`` from a
``configs/<name>.py`` file; flags given beside it override those fields. ``--out DIR`` also
writes the figures to ``DIR/step.csv`` (long format: one metric per row), after each width.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import csv
import dataclasses
import pathlib
import statistics
import time

import jax

from mhc_jax import ops
from mhc_jax.models import ModelConfig
from mhc_jax.train import config as config_lib
from mhc_jax.train import host, trainer
from mhc_jax.train.config import TrainConfig
from mhc_jax.train.optim import make_optimizer

CONNECTIONS = ("residual", "hc", "mhc")
# Without --config: 4 unrolled fp32 blocks, n = 4, batch 16 x 256 (the CPU trio's model).
DEFAULT = TrainConfig(model=ModelConfig(num_streams=4, num_layers=4, scan_layers=False), seq_len=256,
                      batch_size=16)
CSV_FIELDS = ("device", "setting", "connection", "metric", "value", "unit")


def _median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def width_config(args, base: TrainConfig, width: int) -> TrainConfig:
  """``base`` at ``width``, with the flags that were given applied."""
  heads = args.num_heads or (base.model.num_heads if width == base.model.d_model else max(1, width // 64))
  model = {"d_model": width, "num_heads": heads}
  for name in ("num_layers", "dtype", "implementation", "scan_layers", "remat"):
    if getattr(args, name) is not None:
      model[name] = getattr(args, name)
  if args.n is not None:
    model["num_streams"] = args.n
  changes = {name: getattr(args, name) for name in ("seq_len", "batch_size") if getattr(args, name)}
  return base.replace(model=dataclasses.replace(base.model, **model), **changes)


def bench_width(args, cfg: TrainConfig, emit: Callable[[list[dict]], None]) -> None:
  """Times the three connections of ``cfg``'s model; hands the long-format CSV rows to ``emit``
  (the step times first, then the residual forward ratio, which compiles two more programs)."""
  m = cfg.model
  batch = jax.random.randint(jax.random.PRNGKey(0), (cfg.batch_size, cfg.seq_len + 1), 0, 256)
  runs = {}
  for connection in CONNECTIONS:
    c = cfg.replace(model=dataclasses.replace(m, connection=connection))
    tx = make_optimizer(c)
    graphdef, state, _ = trainer.init_state(c, tx)
    params_m = sum(p.size for p in jax.tree.leaves(state["params"])) / 1e6
    compiled = trainer.make_train_step(graphdef, tx).lower(state, batch).compile()
    mem = compiled.memory_analysis()
    for _ in range(2):  # warm up
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    runs[connection] = {"step": compiled, "state": state, "graphdef": graphdef, "times": [],
                        "params_m": params_m,
                        "scratch_mib": getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20}
  for _ in range(args.repeats):
    for run in runs.values():
      start = time.perf_counter()
      run["state"], metrics = run["step"](run["state"], batch)
      jax.block_until_ready(metrics)
      run["times"].append(time.perf_counter() - start)

  tokens = cfg.batch_size * cfg.seq_len
  base = statistics.median(runs["residual"]["times"])
  device = jax.devices()[0].device_kind
  setting = (f"width {m.d_model}, {m.num_layers} blocks, {m.num_heads} heads, {m.dtype}, n = {m.num_streams}, "
             f"batch {cfg.batch_size} x seq {cfg.seq_len}, {'scanned' if m.scan_layers else 'unrolled'} blocks"
             f"{', remat' if m.remat else ''}, implementation {m.implementation}")
  print(f"\n{setting}, median of {args.repeats} interleaved steps on {device}")
  print(f"{'connection':>10} | {'params M':>8} | {'ms/step':>8} | {'tokens/s':>9} | {'x residual':>10} | "
        f"{'peak scratch MiB':>16}")
  rows = []

  def add(connection: str, metric: str, value: float, unit: str) -> None:
    rows.append({"device": device, "setting": setting, "connection": connection, "metric": metric,
                 "value": round(value, 6), "unit": unit})

  for name, run in runs.items():
    t = statistics.median(run["times"])
    print(f"{name:>10} | {run['params_m']:8.1f} | {t * 1e3:8.1f} | {tokens / t:9.0f} | {t / base:10.3f} | "
          f"{run['scratch_mib']:16.1f}")
    add(name, "ms_per_step", t * 1e3, "ms")
    add(name, "tokens_per_s", tokens / t, "tokens/s")
    add(name, "x_residual", t / base, "ratio")
    add(name, "peak_scratch", run["scratch_mib"], "MiB")
    add(name, "params", run["params_m"], "M")
  emit(rows)
  if not args.forward_ratio:
    return
  rows = []

  res = runs["residual"]
  params = res["state"]["params"]
  loss = jax.jit(lambda p, b: trainer.next_token_loss(res["graphdef"], p, b))
  grad = jax.jit(jax.value_and_grad(lambda p, b: trainer.next_token_loss(res["graphdef"], p, b)))
  fwd = _median_ms(loss, params, batch, repeats=args.repeats)
  both = _median_ms(grad, params, batch, repeats=args.repeats)
  print(f"residual forward {fwd:.1f} ms, forward+backward {both:.1f} ms: ratio {both / fwd:.2f}")
  add("residual", "forward_ms", fwd, "ms")
  add("residual", "fwd_bwd_over_fwd", both / fwd, "ratio")
  emit(rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", help="take the model, seq_len and batch_size from a configs/<name>.py file")
  parser.add_argument("--widths", type=int, nargs="+", help="default: 256 512, or the config's d_model")
  parser.add_argument("--num_layers", type=int)
  parser.add_argument("--num_heads", type=int, help="default: the config's, else width // 64")
  parser.add_argument("--n", type=int, help="streams (default 4, or the config's)")
  parser.add_argument("--seq_len", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                      help="activations and stream state (parameters stay fp32); default float32")
  parser.add_argument("--scan_layers", action=argparse.BooleanOptionalAction,
                      help="run the blocks with lax.scan (default: unrolled, as the CPU configs do)")
  parser.add_argument("--remat", action=argparse.BooleanOptionalAction,
                      help="wrap each block in jax.checkpoint (default: off, or the config's)")
  parser.add_argument("--forward_ratio", action=argparse.BooleanOptionalAction, default=True,
                      help="also time the residual model's forward and forward+backward (two more compiles)")
  parser.add_argument("--malloc_default", action="store_true",
                      help="leave glibc's malloc settings alone (see mhc_jax.train.host)")
  parser.add_argument("--implementation", choices=ops.IMPLEMENTATIONS,
                      help="the mHC/HC ops' backend (default: auto, the C++ kernels on one CPU)")
  parser.add_argument("--out", type=pathlib.Path, help="also write DIR/step.csv")
  args = parser.parse_args()
  for name in ("num_layers", "num_heads", "n", "seq_len", "batch_size", "repeats"):
    value = getattr(args, name)
    if value is not None and value < 1:
      parser.error(f"--{name}: expected a positive count, got {value}")
  for width in args.widths or []:
    if width < 1:
      parser.error(f"--widths: expected positive widths, got {width}")
  try:
    base = config_lib.load_config_file(args.config) if args.config else DEFAULT
    configs = [width_config(args, base, w)
               for w in args.widths or ([base.model.d_model] if args.config else [256, 512])]
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  if not args.malloc_default:
    host.keep_freed_memory()  # as experiments/train.py does
  ops.prepare(configs[0].model.implementation)
  if not args.out:
    for cfg in configs:
      bench_width(args, cfg, emit=lambda rows: None)
    return
  args.out.mkdir(parents=True, exist_ok=True)
  with open(args.out / "step.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()

    def emit(rows: list[dict]) -> None:
      writer.writerows(rows)
      f.flush()  # a run stopped later keeps these

    for cfg in configs:
      bench_width(args, cfg, emit)
  print(f"wrote {args.out / 'step.csv'}")


if __name__ == "__main__":
  main()
