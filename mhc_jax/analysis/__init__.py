"""Propagation analysis of HC and mHC residual streams (docs/math.md §7).

* :func:`capture`: one forward pass with map capture on; every sublayer's per-token ``h_pre``,
  ``h_post`` and ``h_res``, stacked in depth order (attention, FFN, attention, ...).
* :func:`gain_forward`, :func:`gain_backward`: the Amax gain magnitudes (largest |row sum|,
  largest |column sum|); :func:`composites`: the products of the maps along the residual path;
  :func:`amax_gains`: both, per sublayer, per token or of token-averaged maps;
  :func:`doubly_stochastic_error`: how far the maps are from doubly stochastic.
* :func:`plot_gains`, :func:`plot_maps`: PNG figures in the style of the mHC paper's.

Typical use::

    maps = capture(model, tokens)
    gains = amax_gains(maps["h_res"], average="tokens")
    plot_gains({"mHC": gains}, "gains.png")
"""

from mhc_jax.analysis.gains import (
    AVERAGES,
    amax_gains,
    composites,
    doubly_stochastic_error,
    gain_backward,
    gain_forward,
)
from mhc_jax.analysis.maps import capture
from mhc_jax.analysis.plots import plot_gains, plot_maps

__all__ = [
    "AVERAGES",
    "amax_gains",
    "capture",
    "composites",
    "doubly_stochastic_error",
    "gain_backward",
    "gain_forward",
    "plot_gains",
    "plot_maps",
]
