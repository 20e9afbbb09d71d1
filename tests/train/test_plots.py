"""Plots: PNGs of a run's metrics, drawn without pyplot (importing the trainer changes no global state)."""

import subprocess
import sys

from mhc_jax.train import plots


def test_plots_write_pngs(tmp_path):
  rows = [{"step": s, "train_loss": 5.0 - 0.1 * s, "grad_norm": 1.0 + s} for s in range(1, 21)]
  rows += [{"step": 20, "train_loss": 3.0, "val_loss": 3.2, "val_bpb": 4.6}]
  paths = plots.plot_metrics(rows, tmp_path / "plots", title="run")
  paths.append(plots.plot_comparison({"a": rows, "b": rows}, tmp_path / "both.png"))
  assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 10_000 for p in paths)


def test_importing_the_trainer_has_no_side_effects():
  # pyplot is what selects and switches matplotlib's global backend.
  code = "import sys, mhc_jax.train.trainer; assert 'matplotlib.pyplot' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)
