"""Deep, narrow HC against mHC on the real corpus: ``python experiments/stability.py --workdir DIR``.

Trains the same deep, narrow LM (default 12 blocks = 24 sublayers, width 64, n = 4) once with
dynamic HC and once with mHC, at a learning rate high enough for HC's unconstrained H_res products
to grow, then analyzes both final checkpoints (docs/math.md §7). Writes:

  DIR/hc/, DIR/mhc/   the two runs (ordinary train.py workdirs: rerunning resumes them)
  DIR/gains.json      {"hc": {...}, "mhc": {...}}: max_composite_forward / _backward (per-token
                      gains, averaged), the same for the averaged maps, the final val bits/byte,
                      the largest grad norm, whether the run diverged, and the full gain curves
  DIR/curves.png      train loss and grad norm of both against step
  DIR/gains.png       single and composite Amax gains of both against depth (log axis)
"""

import argparse
import json
import pathlib
import sys

from matplotlib.figure import Figure

from mhc_jax import analysis
from mhc_jax.analysis.runs import analyze_run
from mhc_jax.models import ModelConfig
from mhc_jax.train import trainer
from mhc_jax.train.config import TrainConfig

RUNS = {"hc": "HC", "mhc": "mHC"}


def stability_config(connection: str, args) -> TrainConfig:
  """The deep, narrow model both runs share; only ``connection`` differs."""
  return TrainConfig(
      model=ModelConfig(connection=connection, num_streams=4, num_layers=args.num_layers,
                        d_model=args.d_model, num_heads=2),
      seq_len=128, batch_size=8, seed=args.seed,
      learning_rate=args.learning_rate, warmup_steps=max(1, args.steps // 20), train_steps=args.steps,
      log_every=5, eval_every=max(1, args.steps // 4), eval_batches=4,
      checkpoint_every=max(1, args.steps // 4))


def _summary(rows: list[dict], report: dict, diverged: str | None) -> dict:
  vals = [r for r in rows if "val_bpb" in r]
  norms = [r["grad_norm"] for r in rows if "grad_norm" in r]
  return {
      "max_composite_forward": report["tokens"]["max_composite_forward"],
      "max_composite_backward": report["tokens"]["max_composite_backward"],
      "max_composite_forward_averaged_maps": report["matrices"]["max_composite_forward"],
      "max_composite_backward_averaged_maps": report["matrices"]["max_composite_backward"],
      "final_val_bpb": vals[-1]["val_bpb"] if vals else None,
      "max_grad_norm": max(norms) if norms else None,
      "diverged": diverged,
      "analyzed_step": report["step"],
      "report": report,
  }


def plot_curves(rows_by_name: dict[str, list[dict]], path: pathlib.Path) -> pathlib.Path:
  """Train loss and grad norm (log axis) of each run against step."""
  fig = Figure(figsize=(11, 4))
  ax_loss, ax_norm = fig.subplots(1, 2)
  for name, rows in rows_by_name.items():
    steps = [r["step"] for r in rows if "train_loss" in r]
    ax_loss.plot(steps, [r["train_loss"] for r in rows if "train_loss" in r], label=name)
    ax_norm.plot(steps, [r["grad_norm"] for r in rows if "train_loss" in r], label=name)
  ax_loss.set(xlabel="step", ylabel="train loss (nats/byte)", title="train loss")
  ax_norm.set(xlabel="step", ylabel="gradient norm", yscale="log", title="gradient norm")
  for ax in (ax_loss, ax_norm):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_layers", type=int, default=12, help="blocks (2 sublayers each); >= 12")
  parser.add_argument("--d_model", type=int, default=64)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--learning_rate", type=float, default=3e-2)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.num_layers < 12:
    parser.error(f"--num_layers={args.num_layers}: the comparison needs at least 12 blocks (24 sublayers)")
  try:
    configs = {c: stability_config(c, args) for c in RUNS}
  except ValueError as e:
    parser.error(str(e))
  workdir = pathlib.Path(args.workdir)
  results, rows_by_name = {}, {}
  for connection, name in RUNS.items():
    run_dir = workdir / connection
    print(f"training {name}: {2 * args.num_layers} sublayers, width {args.d_model}, "
          f"lr {args.learning_rate}, {args.steps} steps -> {run_dir}", file=sys.stderr)
    diverged = None
    try:
      trainer.train(configs[connection], run_dir)
    except trainer.TrainingDiverged as e:
      diverged = str(e)
      print(f"{name} diverged: {e}", file=sys.stderr)
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows_by_name[name] = rows
    results[connection] = _summary(rows, analyze_run(run_dir), diverged)
  (workdir / "gains.json").write_text(json.dumps(results, indent=1))
  plot_curves(rows_by_name, workdir / "curves.png")
  analysis.plot_gains({RUNS[c]: r["report"]["tokens"] for c, r in results.items()}, workdir / "gains.png")
  print("| run | max composite gain fwd / bwd (per token) | (averaged maps) | max grad norm | "
        "final val bits/byte | diverged |")
  print("|---|---|---|---|---|---|")
  for connection, r in results.items():
    bpb = f"{r['final_val_bpb']:.4f}" if r["final_val_bpb"] is not None else "-"
    print(f"| {RUNS[connection]} | {r['max_composite_forward']:.4g} / {r['max_composite_backward']:.4g} | "
          f"{r['max_composite_forward_averaged_maps']:.4g} / {r['max_composite_backward_averaged_maps']:.4g} | "
          f"{r['max_grad_norm']:.3g} | {bpb} | {'yes' if r['diverged'] else 'no'} |")
  print(f"wrote {workdir}/gains.json, curves.png, gains.png", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
