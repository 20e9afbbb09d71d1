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
# # The residual maps of trained residual, HC and mHC models
#
# Notebook 01 used random maps. Here we look at the maps that trained language models actually compute.
# For each run, `mhc_jax.analysis.runs.analyze_run(workdir)` loads the newest checkpoint, runs the model
# on the first validation windows with map capture on, and collects every sublayer's per-token
# $H_\text{pre}$, $H_\text{post}$ and $H_\text{res}$ in depth order (attention, MLP, attention, ...). From
# them it computes the Amax gains of the single maps $H_l$ and of the composites along the residual path
# (docs/math.md §7):
#
# * forward $P_l = H_l \cdots H_0$, from the embedding to sublayer $l$'s output, with gain
#   $\mathrm{gain_{fwd}}(P_l)$, the largest absolute row sum;
# * backward $Q_l = H_{S-1} \cdots H_l$, from sublayer $l$'s input to the top, with gain
#   $\mathrm{gain_{bwd}}(Q_l)$, the largest absolute column sum (gradients flow through $Q_l^\top$).
#
# The gains are averaged over tokens in two ways. `"tokens"` takes each token's gain and then averages.
# `"matrices"` averages the maps over tokens first and takes the gains of the averages, as the paper's
# Fig. 8 does. A residual model has one stream and $H_\text{res} = 1$, the reference that every gain is
# compared with.
#
# The runs come from the parameter cell below. By default they are the matched trio that `make trio`
# trains (same 4-block, width-256 byte-level LM, 300 steps). Paths are relative to the repository root.
# To analyze other runs, edit the cell, or set `MHC_NOTEBOOK_RUNS` to JSON of `{label: workdir}` before
# starting Jupyter.

# %% tags=["parameters"]
RUNS = {"residual": "runs/small_residual_cpu", "HC": "runs/small_hc_cpu", "mHC": "runs/small_mhc_cpu"}
BATCH_SIZE = 4  # validation windows (of the run's seq_len bytes) the maps are captured on

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
import tempfile

from IPython.display import Image, Markdown, display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np

from mhc_jax import analysis
from mhc_jax.analysis.runs import analyze_run

FIGURES = pathlib.Path(tempfile.mkdtemp(prefix="mhc_notebook_02_"))  # the library's plots write PNGs
reports = {label: analyze_run(workdir, batch_size=BATCH_SIZE) for label, workdir in WORKDIRS.items()}

# %% [markdown]
# ## The runs at a glance
#
# The largest composite gains over depth, in both averaging modes, and how far the single maps are from
# doubly stochastic: the worst $|\text{row sum} - 1|$ and $|\text{column sum} - 1|$ over sublayers and
# tokens, and the smallest entry. mHC's maps should be doubly stochastic up to Sinkhorn's truncation.
# HC's start at the identity (doubly stochastic) and drift away from it during training.

# %%
table = ["| run | connection | n | step | sublayers | max composite gain fwd / bwd, per token | "
         "same, averaged maps | worst row / column sum error | min entry |",
         "|---|---|---|---|---|---|---|---|---|"]
for label, r in reports.items():
  t, m, err = r["tokens"], r["matrices"], r["doubly_stochastic_error"]
  n = 1 if r["connection"] == "residual" else r["num_streams"]  # a residual model has one stream
  table.append(f"| {label} | {r['connection']} | {n} | {r['step']} | {r['sublayers']} | "
               f"{t['max_composite_forward']:.4g} / {t['max_composite_backward']:.4g} | "
               f"{m['max_composite_forward']:.4g} / {m['max_composite_backward']:.4g} | "
               f"{max(err['row_error']):.2e} / {max(err['column_error']):.2e} | {min(err['min_entry']):.3g} |")
display(Markdown("\n".join(table)))

# %% [markdown]
# ## Single maps and their composites
#
# `analysis.plot_maps` draws the token-averaged $H_l$ of the first, middle and last sublayer (top row)
# and the forward composites $P_l$ up to them (bottom row). Each matrix is annotated with its entries;
# its row sums are the y tick labels and its column sums the x tick labels. For mHC, every row and
# column of the single maps and of the composites sums to 1. Training moves the entries *within* the
# polytope, for example towards a permutation or towards uniform mixing. For HC, the sums drift.

# %%
for i, (label, r) in enumerate(reports.items()):
  if r["num_streams"] == 1 or r["connection"] == "residual":
    display(Markdown(f"**{label}** ({r['connection']}, one stream): every $H_\\text{{res}}$ is the scalar 1, "
                     "so there is no map to draw. Its gains are the flat reference in the curves below."))
    continue
  display(Markdown(f"**{label}** ({r['connection']}, n = {r['num_streams']}, step {r['step']}): "
                   "token-averaged maps"))
  display(Image(filename=analysis.plot_maps(np.asarray(r["mean_h_res"]), FIGURES / f"maps_{i}.png")))

# %% [markdown]
# ## Gains against depth
#
# `analysis.plot_gains` puts all runs on one figure: the single maps on the left, the composites on the
# right, forward solid and backward dashed, on a log axis. The first figure uses per-token gains averaged
# over tokens, the second the gains of the token-averaged maps. Gains are convex, so the single-map gains
# of averaged maps never exceed the per-token ones. A gap between the two figures means that the maps
# vary from token to token.

# %%
for average, what in (("tokens", "per-token gains, averaged over tokens"),
                      ("matrices", "gains of the token-averaged maps (the paper's Fig. 8)")):
  display(Markdown(f"**{what}**"))
  path = analysis.plot_gains({label: r[average] for label, r in reports.items()}, FIGURES / f"gains_{average}.png")
  display(Image(filename=path))

# %% [markdown]
# ## Where each sublayer reads and writes
#
# $H_\text{pre}$ weights the streams that a sublayer reads, and $H_\text{post}$ the streams it writes its
# output to. Here are their token means against depth. In mHC, $H_\text{pre} = \sigma(\cdot) \in (0, 1)$
# and $H_\text{post} = 2\sigma(\cdot) \in (0, 2)$. HC's are unconstrained and start from $a_\text{pre} =
# e_{l \bmod n}$ and $b_\text{post} = \mathbf{1}$. A residual model reads and writes its one stream with
# weight 1.

# %%
streams = {label: r for label, r in reports.items() if r["num_streams"] > 1 and r["connection"] != "residual"}
if streams:
  fig, axes = plt.subplots(len(streams), 2, figsize=(9, 3.2 * len(streams)), squeeze=False)
  for row, (label, r) in zip(axes, streams.items()):
    for ax, key, name in zip(row, ("mean_h_pre", "mean_h_post"), ("H_pre", "H_post")):
      values = np.asarray(r[key])  # [sublayers, n]
      image = ax.imshow(values, cmap="viridis", aspect="auto")
      ax.set(xlabel="stream", ylabel="sublayer l", title=f"{label}: token-mean {name}")
      ax.set_xticks(range(values.shape[1]))
      ax.yaxis.set_major_locator(MaxNLocator(integer=True))
      fig.colorbar(image, ax=ax)
  fig.tight_layout()
  plt.show()
