"""Compare finished runs: a table (tokens/s, final val loss and bits per byte) and one PNG.

    python experiments/compare_runs.py runs/small_residual_cpu runs/small_hc_cpu runs/small_mhc_cpu \
        --out docs/small_cpu_trio.png
"""

import argparse
import json
import pathlib
import statistics
import sys

from mhc_jax.train import plots


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default="runs/comparison.png")
  args = parser.parse_args(argv)
  runs = {}
  print("| run | steps | tokens/s (median) | final val loss | final val bits/byte |")
  print("|---|---|---|---|---|")
  for workdir in map(pathlib.Path, args.workdirs):
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    runs[workdir.name] = rows
    speed = statistics.median(r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r and r["step"] > 10)
    last = [r for r in rows if "val_bpb" in r][-1]
    print(f"| {workdir.name} | {last['step']} | {speed:,.0f} | {last['val_loss']:.4f} | {last['val_bpb']:.4f} |")
  print(f"plot: {plots.plot_comparison(runs, args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
