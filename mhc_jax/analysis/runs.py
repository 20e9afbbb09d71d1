"""Propagation analysis of a trained run: its newest checkpoint, a validation batch, every gain.

    report = analyze_run("runs/small_mhc_cpu")        # a JSON-ready dict
    report["tokens"]["max_composite_forward"]           # the paper's Fig. 7 peak

Used by ``experiments/analyze.py``, ``experiments/stability.py`` and the notebooks.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mhc_jax.analysis.gains import AVERAGES, amax_gains, doubly_stochastic_error
from mhc_jax.analysis.maps import capture


def val_batch(cfg, batch_size: int = 4) -> np.ndarray:
  """The first ``batch_size`` validation windows ``[B, seq_len]`` of the run's corpus and split."""
  from mhc_jax.train import data as data_lib  # the analysis of bare maps needs no training code
  data = data_lib.prepare_data(cfg.data_source or None, cfg.seq_len, batch_size, cfg.seed, verbose=False)
  return data.eval_batches(1)[0][:, :-1]


def run_maps(model, cfg, tokens) -> dict[str, jax.Array]:
  """``capture(model, tokens)``; a residual model's maps are the identity (H_pre = H_post = 1)."""
  if cfg.model.connection != "residual" and cfg.model.num_streams > 1:
    return capture(model, tokens)
  s, (b, length) = 2 * cfg.model.num_layers, tokens.shape
  ones = jnp.ones((s, b, length, 1), jnp.float32)
  return {"h_pre": ones, "h_post": ones, "h_res": ones[..., None]}


def gains_report(maps: dict[str, jax.Array]) -> dict:
  """JSON-ready gains of captured maps: per averaging mode (``"tokens"``, ``"matrices"``) the
  per-sublayer curves and their maxima, the doubly-stochastic error, and the token-mean maps."""
  h_res = maps["h_res"]
  report = {}
  for average in AVERAGES:
    report[average] = {k: np.asarray(v).tolist() for k, v in amax_gains(h_res, average).items()}
  err = doubly_stochastic_error(h_res)
  report["doubly_stochastic_error"] = {k: np.asarray(v).tolist() for k, v in err.items()}
  token_axes = tuple(range(1, h_res.ndim - 2))
  report["mean_h_res"] = np.asarray(jnp.mean(h_res, axis=token_axes)).tolist()
  report["mean_h_pre"] = np.asarray(jnp.mean(maps["h_pre"], axis=token_axes)).tolist()
  report["mean_h_post"] = np.asarray(jnp.mean(maps["h_post"], axis=token_axes)).tolist()
  report["sublayers"] = int(h_res.shape[0])
  return report


def analyze_run(workdir: str | pathlib.Path, *, batch_size: int = 4) -> dict:
  """Loads ``workdir``'s newest checkpoint, captures its maps on the first validation windows,
  and returns :func:`gains_report` plus ``connection``, ``num_streams``, ``res_projection`` and
  the checkpoint's ``step``."""
  from mhc_jax.train import trainer
  model, cfg = trainer.load_for_inference(workdir)
  tokens = val_batch(cfg, batch_size)
  report = gains_report(run_maps(model, cfg, tokens))
  report.update(connection=cfg.model.connection, num_streams=cfg.model.num_streams,
                res_projection=cfg.model.mhc_res_projection,
                step=max(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                         if p.name.isdigit()))
  return report
