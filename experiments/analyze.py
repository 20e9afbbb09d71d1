"""Propagation analysis of a trained run: ``python experiments/analyze.py --workdir DIR``.

Loads the newest checkpoint, captures every sublayer's H_pre, H_post and H_res on the first
validation windows, and writes to ``DIR/analysis/`` (or ``--out``):

  gains.json   per-sublayer Amax gains of the single and composite H_res maps, forward and backward,
               both averaging modes ("tokens": per-token gains averaged; "matrices": gains of the
               token-averaged maps), their maxima, the doubly-stochastic error, the mean maps
  gains.png    the gain curves against depth (log axis), both averaging modes
  maps.png     heatmaps of the first, middle and last token-averaged H_res and their composites
"""

import argparse
import json
import pathlib
import sys

import numpy as np

from mhc_jax import analysis
from mhc_jax.analysis.runs import analyze_run


def write_analysis(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None,
                   batch_size: int = 4) -> dict:
  """Analyzes ``workdir`` and writes gains.json, gains.png and maps.png into ``out``."""
  out = pathlib.Path(out) if out else pathlib.Path(workdir) / "analysis"
  out.mkdir(parents=True, exist_ok=True)
  report = analyze_run(workdir, batch_size=batch_size)
  (out / "gains.json").write_text(json.dumps(report, indent=1))
  analysis.plot_gains({"per-token gains, averaged": report["tokens"],
                       "gains of averaged maps": report["matrices"]}, out / "gains.png")
  analysis.plot_maps(np.asarray(report["mean_h_res"]), out / "maps.png")
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a run's workdir (with checkpoints/)")
  parser.add_argument("--out", help="where to write (default: WORKDIR/analysis)")
  parser.add_argument("--batch_size", type=int, default=4, help="validation windows to capture on")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error(f"--batch_size={args.batch_size}: must be >= 1")
  if not (pathlib.Path(args.workdir) / "checkpoints").is_dir():
    parser.error(f"--workdir={args.workdir}: no checkpoints/ folder there; train a run first "
                 "(python experiments/train.py --config configs/<name>.py --workdir DIR)")
  report = write_analysis(args.workdir, args.out, args.batch_size)
  t, m = report["tokens"], report["matrices"]
  err = report["doubly_stochastic_error"]
  print(f"{args.workdir}: {report['connection']}, n={report['num_streams']}, step {report['step']}, "
        f"{report['sublayers']} sublayers")
  print(f"  max composite gain, forward / backward: {t['max_composite_forward']:.4g} / "
        f"{t['max_composite_backward']:.4g} (per token), {m['max_composite_forward']:.4g} / "
        f"{m['max_composite_backward']:.4g} (averaged maps)")
  print(f"  max single gain, forward / backward: {max(t['single_forward']):.4g} / "
        f"{max(t['single_backward']):.4g}; doubly-stochastic error rows / columns: "
        f"{max(err['row_error']):.2e} / {max(err['column_error']):.2e}")
  print(f"  wrote {args.out or pathlib.Path(args.workdir) / 'analysis'}/{{gains.json,gains.png,maps.png}}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
