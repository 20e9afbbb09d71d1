"""PNG plots of a run's metrics: loss (train and validation) and gradient norm.

Figures are ``matplotlib.figure.Figure`` objects saved straight to PNG, without pyplot: no global
backend switch, no window, and nothing to close.
"""

from __future__ import annotations

import pathlib

from matplotlib.figure import Figure


def _series(rows: list[dict], key: str):
  pts = [(r["step"], r[key]) for r in rows if key in r]
  return [p[0] for p in pts], [p[1] for p in pts]


def plot_metrics(rows: list[dict], out_dir: str | pathlib.Path, title: str = "") -> list[pathlib.Path]:
  """Writes ``loss.png`` and ``grad_norm.png`` into ``out_dir``; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  for key, label in (("train_loss", "train"), ("val_loss", "validation")):
    steps, values = _series(rows, key)
    if steps:
      ax.plot(steps, values, label=label, marker="o" if key == "val_loss" else None, markersize=3)
  ax.set(xlabel="step", ylabel="loss (nats per byte)", title=f"{title}: loss" if title else "loss")
  ax.grid(alpha=0.3)
  ax.legend()
  paths.append(out_dir / "loss.png")
  fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  steps, values = _series(rows, "grad_norm")
  ax.plot(steps, values, color="tab:red")
  ax.set(xlabel="step", ylabel="global gradient norm (before clipping)",
         title=f"{title}: gradient norm" if title else "gradient norm", yscale="log")
  ax.grid(alpha=0.3)
  paths.append(out_dir / "grad_norm.png")
  fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
  return paths


def plot_comparison(runs: dict[str, list[dict]], path: str | pathlib.Path) -> pathlib.Path:
  """Validation bits per byte and gradient norm of several runs side by side (one PNG)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = Figure(figsize=(12, 4.5))
  ax_val, ax_grad = fig.subplots(1, 2)
  for name, rows in runs.items():
    ax_val.plot(*_series(rows, "val_bpb"), marker="o", markersize=3, label=name)
    ax_grad.plot(*_series(rows, "grad_norm"), label=name, alpha=0.8)
  ax_val.set(xlabel="step", ylabel="validation bits per byte", title="validation loss")
  ax_grad.set(xlabel="step", ylabel="global gradient norm", title="gradient norm", yscale="log")
  for ax in (ax_val, ax_grad):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path
