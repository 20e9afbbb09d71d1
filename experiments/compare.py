"""The paper's comparisons at CPU scale, over seeds: ``python experiments/compare.py --workdir DIR``.

Trains every variant with every seed on the real corpus, the same model and data otherwise, then
reports the mean and the standard deviation over seeds (docs/math.md §7 for the gains):

  residual      the Pre-Norm residual baseline
  hc            dynamic Hyper-Connections, n streams
  mhc           mHC (Sinkhorn), n streams
  mhc_lite      mHC-lite (permutation mixture), n streams
  hc_res_only   the ablation: HC with H_pre and H_post fixed (1/n and 1), only H_res learned
  hc_no_res     the ablation: HC with H_res fixed to the identity, H_pre and H_post learned

Writes DIR/<variant>/seed<k>/ (ordinary train.py workdirs; rerunning resumes or skips them),
DIR/results.json (per variant: every seed's final val loss, val bits/byte, largest grad norm and
largest composite gains, and their means and standard deviations), DIR/results.md (the table) and
DIR/curves.png (val bits/byte and grad norm against step, the mean over seeds with a band of one
standard deviation).
"""

import argparse
import json
import pathlib
import statistics
import sys

import numpy as np
from matplotlib.figure import Figure

from mhc_jax.analysis.runs import analyze_run
from mhc_jax.models import ModelConfig
from mhc_jax.train import trainer
from mhc_jax.train.config import TrainConfig

VARIANTS = {
    "residual": dict(connection="residual"),
    "hc": dict(connection="hc"),
    "mhc": dict(connection="mhc"),
    "mhc_lite": dict(connection="mhc", mhc_res_projection="permutations"),
    "hc_res_only": dict(connection="hc", fixed_maps=("pre", "post")),
    "hc_no_res": dict(connection="hc", fixed_maps=("res",)),
}
METRICS = ("val_loss", "val_bpb", "max_grad_norm", "max_composite_forward", "max_composite_backward")


def variant_config(variant: str, seed: int, args) -> TrainConfig:
  """The shared model and schedule, with ``variant``'s connection and ``seed``."""
  model = ModelConfig(num_streams=args.num_streams, num_layers=args.num_layers, d_model=args.d_model,
                      num_heads=args.d_model // 64 or 1, scan_layers=False, **VARIANTS[variant])
  return TrainConfig(model=model, seq_len=args.seq_len, batch_size=args.batch_size, seed=seed,
                     learning_rate=args.learning_rate, warmup_steps=max(1, args.steps // 10),
                     train_steps=args.steps, log_every=10, eval_every=max(1, args.steps // 6),
                     eval_batches=8, checkpoint_every=args.steps, mesh=(1, 1, 1))


def run_summary(rows: list[dict], report: dict) -> dict:
  """One finished run: its final validation numbers, largest grad norm and composite gains."""
  last = [r for r in rows if "val_bpb" in r][-1]
  return {"val_loss": last["val_loss"], "val_bpb": last["val_bpb"],
          "max_grad_norm": max(r["grad_norm"] for r in rows if "grad_norm" in r),
          "max_composite_forward": report["tokens"]["max_composite_forward"],
          "max_composite_backward": report["tokens"]["max_composite_backward"]}


def aggregate(per_seed: dict[int, dict]) -> dict:
  """Mean and standard deviation over seeds (the sample std; 0 for one seed) of every metric."""
  out = {"seeds": sorted(per_seed), "runs": {str(s): per_seed[s] for s in sorted(per_seed)}}
  for key in METRICS:
    values = [per_seed[s][key] for s in sorted(per_seed)]
    out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
  return out


def _read_rows(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def plot_curves(rows: dict[str, list[list[dict]]], path: pathlib.Path) -> pathlib.Path:
  """Val bits/byte and grad norm against step: the mean over seeds, with a +-1 std band."""
  fig = Figure(figsize=(11, 4))
  ax_bpb, ax_norm = fig.subplots(1, 2)
  for variant, runs in rows.items():
    for ax, key in ((ax_bpb, "val_bpb"), (ax_norm, "grad_norm")):
      steps = [r["step"] for r in runs[0] if key in r]
      values = np.array([[r[key] for r in run if key in r] for run in runs])
      mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
      (line,) = ax.plot(steps, mean, label=variant)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax_bpb.set(xlabel="step", ylabel="val bits/byte", title="validation (mean over seeds, ±1 std)")
  ax_norm.set(xlabel="step", ylabel="gradient norm", yscale="log", title="gradient norm")
  for ax in (ax_bpb, ax_norm):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def results_table(results: dict) -> str:
  """The markdown table of means +- standard deviations."""
  fmt = lambda m, digits: f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"
  lines = ["| variant | seeds | val loss (nats/byte) | val bits/byte | max grad norm | "
           "max composite gain fwd | bwd |", "|---|---|---|---|---|---|---|"]
  for variant, r in results.items():
    lines.append(f"| {variant} | {len(r['seeds'])} | {fmt(r['val_loss'], 4)} | {fmt(r['val_bpb'], 4)} | "
                 f"{fmt(r['max_grad_norm'], 3)} | {fmt(r['max_composite_forward'], 3)} | "
                 f"{fmt(r['max_composite_backward'], 3)} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--num_layers", type=int, default=4, help="blocks (2 sublayers each)")
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--num_streams", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  args = parser.parse_args(argv)
  try:
    configs = {(v, s): variant_config(v, s, args) for v in args.variants for s in args.seeds}
  except ValueError as e:
    parser.error(str(e))
  workdir = pathlib.Path(args.workdir)
  summaries, curves = {}, {}
  for i, ((variant, seed), cfg) in enumerate(configs.items()):
    run_dir = workdir / variant / f"seed{seed}"
    print(f"[{i + 1}/{len(configs)}] {variant}, seed {seed} -> {run_dir}", file=sys.stderr)
    trainer.train(cfg, run_dir)  # a finished run returns at once
    rows = _read_rows(run_dir)
    summaries.setdefault(variant, {})[seed] = run_summary(rows, analyze_run(run_dir))
    curves.setdefault(variant, []).append(rows)
  results = {v: aggregate(per_seed) for v, per_seed in summaries.items()}
  (workdir / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
  table = results_table(results)
  (workdir / "results.md").write_text(table + "\n")
  plot_curves(curves, workdir / "curves.png")
  print(table)
  print(f"wrote {workdir}/results.json, results.md, curves.png", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
