"""Activation memory and step time of residual, HC and mHC, with and without mHC recomputation.

    python experiments/bench_memory.py [--out runs/bench_memory] [--steps 5] [--quick]
                                       [--depths 4 8 16 32 64] [--n_values 1 2 4 8]

Five variants of one small LM (``--d_model``, ``--seq_len``, ``--batch_size``; fp32, scanned
blocks, ``--implementation``, default auto: the C++ kernels on a CPU) are compiled with the library's own train step
(``mhc_jax.train.memory.compile_train_step``: AdamW, clipping, donation) from abstract shapes:

  residual              the Pre-Norm residual baseline, no rematerialization
  residual+recompute    the same residual model under the mHC recompute policy, with the L_r that
                        mHC's "auto" picks at that point: a matched comparison (same segments,
                        same saved matmul outputs)
  hc                    hyper-connections, no recompute
  mhc                   mHC, no recompute
  mhc+recompute         mHC with ``mhc_recompute="auto"`` (L_r = 2 * ``recompute_blocks()``)

at two sweeps: depth (``--depths`` sublayers, two per block, at n = ``--n``) and streams
(``--n_values`` at ``--depth`` sublayers). Activation memory is the compiled step's
``memory_analysis().temp_size_in_bytes``: everything XLA allocates for the step beyond its
inputs and outputs, i.e. the activations kept for the backward pass plus the gradients and
the optimizer update's scratch (at the default size about twice the parameters' bytes, which the
CSV gives too: that part dilutes the ratios a little). It is reported in MiB and as ratios to the
residual baseline and to residual+recompute at the same point.

With ``--steps`` > 0 each point's variants are then run from real parameters: two warm-up steps,
then ``--steps`` steps round-robin (so machine noise hits all variants alike), and the median
step time is reported as a ratio to the residual's. Ratios are taken within the run only.

Writes to ``--out``: ``memory.csv`` (one row per variant, n and depth), ``table.md`` (the
Markdown tables, also printed) and ``memory.png`` (memory against depth and against n).
Finally it prints, for each depth at n = ``--n``, whether mHC with recompute stays within
``--goal`` (1.2) times the activation memory of the residual and of residual+recompute.
The defaults (width 128, 2 heads, batch 8 x seq 128, vocab 256) take about 8 minutes on 2 CPU
cores, half of it timing (``--steps 0`` skips that); ``--quick`` about 3.

Caveat: the figures are XLA:CPU's buffer assignment. XLA:GPU fuses differently and runs
attention through cuDNN (this CPU compile materializes the attention logits, H x L floats per
token and attention sublayer against the C of the stream, a large share at this small width), so
a GPU compile's temp bytes, and their ratios, may differ.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from mhc_jax import ops, parallel
from mhc_jax.models import ModelConfig
from mhc_jax.train import host, memory, trainer
from mhc_jax.train.config import TrainConfig
from mhc_jax.train.optim import make_optimizer

VARIANTS = ("residual", "residual+recompute", "hc", "mhc", "mhc+recompute")
FIELDS = ("sweep", "variant", "n", "sublayers", "recompute_L_r", "temp_bytes", "temp_MiB", "x_residual",
          "x_residual_recompute", "params_MiB", "step_ms", "step_x_residual")
MIB = 2**20


def variant_config(base: TrainConfig, variant: str, n: int, sublayers: int) -> TrainConfig:
  """``base`` as ``variant`` with ``n`` streams and ``sublayers`` sublayers."""
  model = dataclasses.replace(base.model, num_streams=n, num_layers=sublayers // 2)
  auto = model.replace(connection="mhc", mhc_recompute="auto")
  recompute = 2 * auto.recompute_blocks()
  model = {
      "residual": model.replace(connection="residual", num_streams=1),
      "residual+recompute": model.replace(connection="residual", num_streams=1, mhc_recompute=recompute),
      "hc": model.replace(connection="hc"),
      "mhc": model.replace(connection="mhc"),
      "mhc+recompute": auto,
  }[variant]
  return base.replace(model=model)


class Compiler:
  """Compiles train steps from abstract shapes on one device, once per distinct config."""

  def __init__(self):
    self.mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
    self._cache = {}

  def __call__(self, cfg: TrainConfig):
    """``(compiled step, abstract batch, temp bytes, parameter bytes)`` of ``cfg``."""
    if cfg not in self._cache:
      compiled, state, batch = memory.compile_train_step(cfg, self.mesh)
      params = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state["params"]))
      self._cache[cfg] = compiled, batch, int(compiled.memory_analysis().temp_size_in_bytes), params
    return self._cache[cfg]


def time_steps(compiler: Compiler, configs: dict[str, TrainConfig], steps: int) -> dict[str, float]:
  """Median seconds per step of each config's compiled step, run round-robin from real state."""
  runs = {}
  for name, cfg in configs.items():
    step, abstract_batch, _, _ = compiler(cfg)
    _, state, _ = trainer.init_state(cfg, make_optimizer(cfg), compiler.mesh)
    tokens = jax.random.randint(jax.random.key(0), abstract_batch.shape, 0, cfg.model.vocab_size, jnp.int32)
    batch = jax.device_put(tokens, abstract_batch.sharding)
    for _ in range(2):  # warm up
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    runs[name] = {"step": step, "state": state, "batch": batch, "times": []}
  for _ in range(steps):
    for run in runs.values():
      start = time.perf_counter()
      run["state"], metrics = run["step"](run["state"], run["batch"])
      jax.block_until_ready(metrics)
      run["times"].append(time.perf_counter() - start)
  return {name: statistics.median(run["times"]) for name, run in runs.items()}


def measure(args, base: TrainConfig) -> list[dict]:
  """One row per (variant, n, sublayers) of both sweeps; a point in both is measured once."""
  points = {(args.n, d): "depth" for d in args.depths}
  for n in args.n_values:
    points[(n, args.depth)] = "both" if (n, args.depth) in points else "n"
  compiler = Compiler()
  rows = []
  bar = tqdm(total=len(points) * len(VARIANTS), desc="variants", unit="variant", dynamic_ncols=True)
  for (n, sublayers), sweep in points.items():
    configs = {v: variant_config(base, v, n, sublayers) for v in VARIANTS}
    temp, params = {}, {}
    for variant, cfg in configs.items():
      bar.set_postfix_str(f"n={n} sublayers={sublayers} {variant}")
      _, _, temp[variant], params[variant] = compiler(cfg)
      bar.update()
    seconds = {}
    if args.steps:
      bar.set_postfix_str(f"n={n} sublayers={sublayers}: timing {args.steps} steps")
      seconds = time_steps(compiler, configs, args.steps)
    for variant, cfg in configs.items():
      step = seconds.get(variant)
      rows.append({
          "sweep": sweep, "variant": variant, "n": n, "sublayers": sublayers,
          "recompute_L_r": 2 * cfg.model.recompute_blocks(),
          "temp_bytes": temp[variant], "temp_MiB": round(temp[variant] / MIB, 3),
          "x_residual": round(temp[variant] / temp["residual"], 4),
          "x_residual_recompute": round(temp[variant] / temp["residual+recompute"], 4),
          "params_MiB": round(params[variant] / MIB, 3),
          "step_ms": "" if step is None else round(step * 1e3, 3),
          "step_x_residual": "" if step is None else round(step / seconds["residual"], 4),
      })
  bar.close()
  return rows


def _point(rows: list[dict], n: int, sublayers: int) -> dict[str, dict]:
  return {r["variant"]: r for r in rows if (r["n"], r["sublayers"]) == (n, sublayers)}


def markdown(rows: list[dict], args, setting: str) -> str:
  """The README-ready tables: memory (depth sweep, n sweep) and step time."""
  sweeps = [("sublayers", [(args.n, d) for d in args.depths], f"n = {args.n}"),
            ("n", [(n, args.depth) for n in args.n_values], f"{args.depth} sublayers")]
  lines = [f"Activation memory (XLA:CPU temp bytes of the compiled train step: the activations kept for the "
           f"backward, plus the gradients and the optimizer's scratch) and step time; {setting}.",
           "MiB, with the ratio to the residual baseline in brackets; L_r: the segment length mHC's "
           "`mhc_recompute=\"auto\"` resolves to, also given to residual+recompute.", ""]
  for key, points, fixed in sweeps:
    lines += [f"**Memory, {fixed}**", "",
              f"| {key} | L_r | residual | residual+recompute | HC | mHC | mHC+recompute "
              "| mHC+recompute ÷ residual+recompute |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, sublayers in points:
      p = _point(rows, n, sublayers)
      cells = [f"{p['residual']['temp_MiB']:.1f}"] + [f"{p[v]['temp_MiB']:.1f} ({p[v]['x_residual']:.2f}x)"
                                                       for v in VARIANTS[1:]]
      lines.append(f"| {n if key == 'n' else sublayers} | {p['mhc+recompute']['recompute_L_r']} | "
                   + " | ".join(cells) + f" | {p['mhc+recompute']['x_residual_recompute']:.2f}x |")
    lines.append("")
  if args.steps:
    lines += [f"**Step time, ratio to residual** (median of {args.steps} interleaved steps)", "",
              "| n | sublayers | residual ms | residual+recompute | HC | mHC | mHC+recompute |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, sublayers in dict.fromkeys(point for _, points, _ in sweeps for point in points):
      p = _point(rows, n, sublayers)
      lines.append(f"| {n} | {sublayers} | {p['residual']['step_ms']:.1f} | "
                   + " | ".join(f"{p[v]['step_x_residual']:.2f}x" for v in VARIANTS[1:]) + " |")
    lines.append("")
  return "\n".join(lines)


def verdicts(rows: list[dict], args) -> list[str]:
  """One line per depth at n = ``args.n``: mHC+recompute against the ``args.goal`` ratio."""
  def verdict(ratio: float) -> str:
    return "meets" if ratio <= args.goal else "misses"

  lines = []
  for sublayers in args.depths:
    r = _point(rows, args.n, sublayers)["mhc+recompute"]
    lines.append(f"{sublayers:3d} sublayers, n = {args.n}, L_r = {r['recompute_L_r']}: mHC+recompute is "
                 f"{r['x_residual']:.2f}x residual ({verdict(r['x_residual'])} the {args.goal}x goal) and "
                 f"{r['x_residual_recompute']:.2f}x residual+recompute "
                 f"({verdict(r['x_residual_recompute'])} it)")
  return lines


def plot(rows: list[dict], args, path: pathlib.Path, setting: str) -> None:
  """Memory against depth (n = ``args.n``) and against n (``args.depth`` sublayers), with mHC's
  ratios written beside its points: to residual, and for mHC+recompute also to residual+recompute."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  panels = [(axes[0], "sublayers", [(args.n, d) for d in args.depths], f"against depth, n = {args.n}"),
            (axes[1], "n", [(n, args.depth) for n in args.n_values], f"against n, {args.depth} sublayers")]
  for ax, key, points, title in panels:
    xs = [n if key == "n" else d for n, d in points]
    for variant, marker in zip(VARIANTS, "osx^v"):
      ys = [_point(rows, n, d)[variant]["temp_MiB"] for n, d in points]
      line, = ax.plot(xs, ys, marker=marker, label=variant, ls="--" if "recompute" in variant else "-")
      if variant.startswith("mhc"):
        for x, (n, d), y in zip(xs, points, ys):
          r = _point(rows, n, d)[variant]
          label = f"{r['x_residual']:.2f}x" + (f" | {r['x_residual_recompute']:.2f}x" if r["recompute_L_r"] else "")
          above = variant == "mhc"  # mHC+recompute's labels go below right, clear of the mHC line
          ax.annotate(label, (x, y), textcoords="offset points", xytext=(-6, 6) if above else (6, -12),
                      ha="right" if above else "left", fontsize=7, color=line.get_color(),
                      bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xscale("log", base=2)
    ax.margins(x=0.15, y=0.1)  # room for the labels at the edges
    ax.set_yscale("log")
    for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
      set_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("sublayers" if key == "sublayers" else "streams n")
    ax.set_ylabel("temp MiB (XLA:CPU)")
    ax.set_title(f"Activation memory {title}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{setting}\nlabels: mHC ÷ residual; mHC+recompute ÷ residual | ÷ residual+recompute (same L_r)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32, 64],
                      help="sublayers (even: two per block) of the depth sweep")
  parser.add_argument("--n", type=int, default=4, help="streams of the depth sweep")
  parser.add_argument("--n_values", type=int, nargs="+", default=[1, 2, 4, 8], help="streams of the n sweep")
  parser.add_argument("--depth", type=int, default=16, help="sublayers of the n sweep")
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--num_heads", type=int, default=2)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median); 0: no timing")
  parser.add_argument("--goal", type=float, default=1.2, help="the mHC+recompute ÷ residual memory ratio to meet")
  parser.add_argument("--implementation", choices=ops.IMPLEMENTATIONS, default="auto")
  parser.add_argument("--quick", action="store_true", help="depths 4 8 16, n 1 4, 2 timed steps")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench_memory"))
  args = parser.parse_args()
  if args.quick:
    args.depths, args.n_values, args.steps = [4, 8, 16], [1, 4], min(args.steps, 2)
  for name in ("n", "depth", "d_model", "num_heads", "seq_len", "batch_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}: expected a positive count, got {getattr(args, name)}")
  if args.steps < 0:
    parser.error(f"--steps: expected a count >= 0, got {args.steps}")
  if any(n < 1 for n in args.n_values):
    parser.error(f"--n_values: expected positive counts, got {args.n_values}")
  if any(d < 2 or d % 2 for d in args.depths + [args.depth]):
    parser.error(f"--depths/--depth: expected even sublayer counts >= 2 (two per block), "
                 f"got {args.depths} and {args.depth}")
  try:
    base = TrainConfig(model=ModelConfig(d_model=args.d_model, num_heads=args.num_heads,
                                         implementation=args.implementation),
                       seq_len=args.seq_len, batch_size=args.batch_size)
  except ValueError as e:
    parser.error(str(e))

  host.keep_freed_memory()  # as experiments/train.py does: steady step times on XLA:CPU
  ops.prepare(args.implementation)
  m = base.model
  setting = (f"width {m.d_model}, {m.num_heads} heads, {m.dtype}, batch {base.batch_size} x seq {base.seq_len}, "
             f"scanned blocks, implementation {m.implementation}, {jax.devices()[0].device_kind}")
  print(setting)
  start = time.perf_counter()
  rows = measure(args, base)
  args.out.mkdir(parents=True, exist_ok=True)
  with open(args.out / "memory.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  table = markdown(rows, args, setting)
  (args.out / "table.md").write_text(table)
  plot(rows, args, args.out / "memory.png", setting)
  print("\n" + table)
  print("\n".join(verdicts(rows, args)))
  print(f"\n{time.perf_counter() - start:.0f} s; wrote {args.out / 'memory.csv'}, {args.out / 'table.md'} "
        f"and {args.out / 'memory.png'}")


if __name__ == "__main__":
  main()
