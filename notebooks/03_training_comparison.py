# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training residual, HC and mHC: loss, gradient norm and gains
#
# This notebook compares training runs on three things:
#
# * **loss**, in bits per byte. The models are byte-level, so bits per byte is the cross-entropy in nats
#   divided by $\ln 2$. Training loss is logged every `log_every` steps, and validation loss on held-out
#   documents every `eval_every` steps;
# * **global gradient norm** before clipping. It is the usual first symptom of an unstable residual
#   path: HC's unconstrained composites can amplify gradients by large factors (docs/math.md §7);
# * **composite Amax gains** of the trained maps, from `analysis.runs.analyze_run` (notebook 02 shows
#   them in detail).
#
# Each run's `metrics.jsonl` holds one JSON object per logged step: `step`, `train_loss`, `grad_norm`,
# `learning_rate`, `tokens_per_sec`, and `val_loss` and `val_bpb` on eval steps. The runs come from the
# parameter cell. By default they are the `make trio` runs. Paths are relative to the repository root,
# and `MHC_NOTEBOOK_RUNS` (JSON of `{label: workdir}`) overrides the cell. At the trio's size (1.2M
# tokens, one seed each), expect the three to land within noise of each other on loss. The paper's
# stability gap shows at billions of parameters and tokens, or in deep, narrow models
# (`experiments/stability.py`).

# %% tags=["parameters"]
RUNS = {"residual": "runs/small_residual_cpu", "HC": "runs/small_hc_cpu", "mHC": "runs/small_mhc_cpu"}

# %%
import json
import os
import pathlib


def repo_root() -> pathlib.Path:
  """The repository this notebook belongs to: the first folder at or above the working directory that
  holds pyproject.toml and mhc_jax/ (Jupyter starts kernels in the notebook's folder)."""
  for folder in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents):
    if (folder / "pyproject.toml").is_file() and (folder / "mhc_jax").is_dir():
      return folder
  raise FileNotFoundError(f"no mhc_jax repository at or above {pathlib.Path.cwd()}; start Jupyter "
                          "inside the repository (make notebooks)")


ROOT = repo_root()
if os.environ.get("MHC_NOTEBOOK_RUNS"):
  RUNS = json.loads(os.environ["MHC_NOTEBOOK_RUNS"])
  if not (isinstance(RUNS, dict) and RUNS and all(isinstance(v, str) for v in RUNS.values())):
    raise ValueError(f"MHC_NOTEBOOK_RUNS={os.environ['MHC_NOTEBOOK_RUNS']!r}: expected JSON of "
                     '{"label": "workdir", ...}')
WORKDIRS = {label: ROOT / path for label, path in RUNS.items()}  # an absolute path stays as it is
missing = {label: workdir for label, workdir in WORKDIRS.items()
           if not (workdir / "metrics.jsonl").is_file()
           or not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))}
if missing:
  message = ("missing runs (no metrics.jsonl or no checkpoint): "
             + "; ".join(f"{label} in {workdir}" for label, workdir in missing.items())
             + f". Make them with `make trio` in {ROOT} (it trains residual, HC and mHC into "
             "runs/small_{residual,hc,mhc}_cpu, 5-9 minutes each on 2 CPU cores), or point "
             "MHC_NOTEBOOK_RUNS at runs you have.")
  print(message)
  raise FileNotFoundError(message)
for label, workdir in WORKDIRS.items():
  print(f"{label:>10}: {workdir}")

# %%
# %matplotlib inline
import math
import tempfile

from IPython.display import Image, Markdown, display
import matplotlib.pyplot as plt
import numpy as np

from mhc_jax import analysis
from mhc_jax.analysis.runs import analyze_run
from mhc_jax.train import plots

FIGURES = pathlib.Path(tempfile.mkdtemp(prefix="mhc_notebook_03_"))  # the library's plots write PNGs
rows = {label: [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        for label, workdir in WORKDIRS.items()}


def series(run_rows, key, scale=1.0):
  """(steps, values) of the rows that have ``key``."""
  points = [(r["step"], r[key] * scale) for r in run_rows if key in r]
  return np.array([p[0] for p in points]), np.array([p[1] for p in points])


# %% [markdown]
# ## Loss in bits per byte
#
# Training loss (thin line: one batch per logged step, so it is noisy) and validation loss (markers)
# per run, on one axis. The gap between the two shows overfitting, or a validation set whose text is
# harder or easier than the training text. The default split validates on *Julius Caesar* and *Alice in
# Wonderland*.

# %%
fig, ax = plt.subplots(figsize=(9, 5))
for c, (label, run_rows) in enumerate(rows.items()):
  ax.plot(*series(run_rows, "train_loss", 1 / math.log(2)), color=f"C{c}", alpha=0.5, linewidth=1,
          label=f"{label}: train")
  ax.plot(*series(run_rows, "val_bpb"), "o-", color=f"C{c}", markersize=4, label=f"{label}: validation")
ax.set(xlabel="step", ylabel="bits per byte", title="training and validation loss")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Validation loss and gradient norm side by side
#
# `mhc_jax.train.plots.plot_comparison`, the figure under the README's results table: validation bits
# per byte (left) and the global gradient norm on a log axis (right). Spikes in the gradient norm that
# one connection has and the others lack point at its residual path.

# %%
display(Image(filename=plots.plot_comparison(rows, FIGURES / "comparison.png")))

# %% [markdown]
# ## The gains of the trained maps
#
# `analyze_run` captures every sublayer's maps on the first validation windows of each run's newest
# checkpoint (notebook 02 has the details). The composite gains of the averaged curves appear in the
# table below. `analysis.plot_gains` draws per-token gains averaged over tokens.

# %%
reports = {label: analyze_run(workdir) for label, workdir in WORKDIRS.items()}
display(Image(filename=analysis.plot_gains({label: r["tokens"] for label, r in reports.items()},
                                           FIGURES / "gains.png")))

# %% [markdown]
# ## Summary
#
# One row per run. Train bits per byte is the mean over the last 10% of the logged steps, which smooths
# out the batch noise. Validation is the last evaluation. The gradient norm is reported as its median
# and its maximum over the run; a max/median ratio far above the others' means spikes. The last two
# columns are the largest composite gains over depth, forward and backward, per token.

# %%
table = ["| run | steps | train bits/byte (last 10%) | final val bits/byte | best val bits/byte | "
         "grad norm median / max | tokens/s (median) | max composite gain fwd / bwd |",
         "|---|---|---|---|---|---|---|---|"]
for label, run_rows in rows.items():
  _, train = series(run_rows, "train_loss", 1 / math.log(2))
  _, val = series(run_rows, "val_bpb")
  _, grad = series(run_rows, "grad_norm")
  _, speed = series(run_rows, "tokens_per_sec")
  t = reports[label]["tokens"]
  tail = train[-max(1, len(train) // 10):]
  table.append(f"| {label} | {run_rows[-1]['step']} | {tail.mean():.4f} | {val[-1]:.4f} | {val.min():.4f} | "
               f"{np.median(grad):.3g} / {grad.max():.3g} | {np.median(speed):,.0f} | "
               f"{t['max_composite_forward']:.4g} / {t['max_composite_backward']:.4g} |")
display(Markdown("\n".join(table)))
