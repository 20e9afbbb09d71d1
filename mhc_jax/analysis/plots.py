"""PNG figures of the propagation analysis (docs/math.md §7), in the style of the mHC paper's.

As in :mod:`mhc_jax.train.plots`, figures are ``matplotlib.figure.Figure`` objects saved straight to
PNG, without pyplot. Sublayers are numbered from 0 in depth order (attention, FFN, attention, ...).
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.figure import Figure

from mhc_jax.analysis.gains import composites

_DIRECTIONS = (("forward", "-", "forward signal gain"), ("backward", "--", "backward gradient gain"))
_CURVES = (("single", "single-layer map H_l"), ("composite", "composite map (P_l forward, Q_l backward)"))


def plot_gains(gains_by_name: dict[str, dict], path: str | pathlib.Path) -> pathlib.Path:
  """Amax gain curves against sublayer index, several models on one figure (log y axis).

  Args:
    gains_by_name: ``{model name: amax_gains(...)}``, e.g. ``{"HC": ..., "mHC": ...}``.
    path: the PNG to write (its folder is created).

  Left panel: single-layer maps; right panel: composites. Each model has one colour, with the
  forward gain (largest |row sum|) solid and the backward gain (largest |column sum|) dashed.
  Returns ``path``.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = Figure(figsize=(12, 4.5))
  axes = fig.subplots(1, 2)
  for k, (name, gains) in enumerate(gains_by_name.items()):
    color = f"C{k}"
    for ax, (kind, _) in zip(axes, _CURVES, strict=True):
      for direction, style, what in _DIRECTIONS:
        values = np.asarray(gains[f"{kind}_{direction}"])
        ax.plot(np.arange(values.size), values, style, color=color, marker="o", markersize=3,
                label=f"{name}, {what}")
  for ax, (_, title) in zip(axes, _CURVES, strict=True):
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set(xlabel="sublayer index l", ylabel="Amax gain magnitude", title=title, yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path


def _heatmap(ax, m_NxN: np.ndarray, title: str) -> None:
  """One matrix with its row sums as the y tick labels and its column sums as the x tick labels."""
  n = m_NxN.shape[0]
  bound = max(float(np.max(np.abs(m_NxN))), 1e-12)
  ax.imshow(m_NxN, cmap="RdBu_r", vmin=-bound, vmax=bound)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{m_NxN[i, j]:.2g}", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(n), [f"{s:.3g}" for s in m_NxN.sum(axis=0)], fontsize=7, rotation=90)
  ax.set_yticks(range(n), [f"{s:.3g}" for s in m_NxN.sum(axis=1)], fontsize=7)
  ax.set_xlabel("column sums", fontsize=8)
  ax.set_ylabel("row sums", fontsize=8)
  ax.set_title(title, fontsize=9)


def plot_maps(h_res_SxNxN, path: str | pathlib.Path, sublayers=None) -> pathlib.Path:
  """Heatmaps of chosen single maps H_l (top row) and of their forward composites P_l (bottom row).

  Args:
    h_res_SxNxN: ``[S, N, N]`` maps in depth order, one matrix per sublayer (e.g. one token's, or
      the token average ``capture(...)["h_res"].mean(axis=(1, 2))``).
    path: the PNG to write (its folder is created).
    sublayers: the sublayer indices to show; default the first, the middle and the last.

  Each matrix is annotated with its entries, its row sums as the y tick labels and its column sums
  as the x tick labels. Returns ``path``.
  """
  h = np.asarray(h_res_SxNxN, dtype=np.float64)
  if h.ndim != 3 or h.shape[1] != h.shape[2]:
    raise ValueError(f"plot_maps expects [S, N, N] maps (average or pick the tokens first), got {h.shape}")
  s = h.shape[0]
  sublayers = sorted({0, s // 2, s - 1}) if sublayers is None else list(sublayers)
  if not sublayers or any(not 0 <= l < s for l in sublayers):
    raise ValueError(f"sublayers={sublayers}: need indices in [0, {s})")
  p = np.asarray(composites(h)[0])
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = Figure(figsize=(3.2 * len(sublayers), 6.6))
  axes = fig.subplots(2, len(sublayers), squeeze=False)
  for col, l in enumerate(sublayers):
    _heatmap(axes[0, col], h[l], f"single map H_{l}")
    _heatmap(axes[1, col], p[l], f"composite P_{l} = H_{l} ... H_0")
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches="tight")
  return path
