"""The analysis of trained runs: experiments/analyze.py and experiments/stability.py on tiny runs."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from mhc_jax.train import config as config_lib
from mhc_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = config_lib.load_config_file(ROOT / "configs/tiny_cpu.py").replace(
    train_steps=3, eval_every=3, checkpoint_every=3, log_every=1, eval_batches=1, mesh=(1, 1, 1),
    learning_rate=3e-2)


def _script(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = {}
  for connection in ("hc", "mhc"):
    workdir = tmp_path_factory.mktemp(connection)
    trainer.train(TINY.replace(model=TINY.model.replace(connection=connection)), workdir, progress=False)
    out[connection] = workdir
  return out


def _composite_gains(maps):
  """Forward and backward Amax gains of the running products, written out in numpy (float64)."""
  forward, backward = [], []
  p, q = np.eye(maps.shape[-1]), np.eye(maps.shape[-1])
  for h_fwd, h_bwd in zip(maps, maps[::-1]):
    p, q = h_fwd @ p, q @ h_bwd
    forward.append(np.abs(p.sum(1)).max())
    backward.append(np.abs(q.sum(0)).max())
  return forward, backward[::-1]


def test_analyze_writes_gains_of_the_runs_maps(runs, capsys):
  analyze = _script("analyze")
  for connection, workdir in runs.items():
    assert analyze.main(["--workdir", str(workdir), "--batch_size", "2"]) == 0
    out = workdir / "analysis"
    report = json.loads((out / "gains.json").read_text())
    assert (out / "gains.png").stat().st_size > 0 and (out / "maps.png").stat().st_size > 0
    assert report["connection"] == connection and report["step"] == 3 and report["sublayers"] == 4
    maps = np.asarray(report["mean_h_res"], np.float64)
    assert maps.shape == (4, 4, 4)
    forward, backward = _composite_gains(maps)
    np.testing.assert_allclose(report["matrices"]["composite_forward"], forward, rtol=1e-5)
    np.testing.assert_allclose(report["matrices"]["composite_backward"], backward, rtol=1e-5)
    assert report["matrices"]["max_composite_forward"] == pytest.approx(max(forward), rel=1e-5)
    errors = report["doubly_stochastic_error"]
    if connection == "mhc":
      assert max(errors["row_error"] + errors["column_error"]) < 1e-5
      assert min(errors["min_entry"]) >= 0
    else:  # HC's maps after a few steps at a high learning rate are not doubly stochastic
      assert max(errors["row_error"] + errors["column_error"]) > 1e-4
  assert "max composite gain" in capsys.readouterr().out


def test_analyze_refuses_a_workdir_without_checkpoints(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    _script("analyze").main(["--workdir", str(tmp_path)])
  assert e.value.code == 2
  assert f"--workdir={tmp_path}: no checkpoints/" in capsys.readouterr().err


def test_stability_summary_and_plots(runs, tmp_path):
  stability = _script("stability")
  from mhc_jax.analysis.runs import analyze_run
  rows = {c: [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()] for c, w in runs.items()}
  summary = stability._summary(rows["hc"], analyze_run(runs["hc"]), None)
  assert summary["max_composite_forward"] == max(summary["report"]["tokens"]["composite_forward"])
  assert summary["max_grad_norm"] == max(r["grad_norm"] for r in rows["hc"] if "grad_norm" in r)
  assert summary["final_val_bpb"] == [r for r in rows["hc"] if "val_bpb" in r][-1]["val_bpb"]
  assert stability.plot_curves(rows, tmp_path / "curves.png").stat().st_size > 0
  with pytest.raises(SystemExit):
    stability.main(["--workdir", str(tmp_path), "--num_layers", "4"])


def test_compare_summarizes_runs_over_seeds(runs, tmp_path):
  compare = _script("compare")
  from mhc_jax.analysis.runs import analyze_run
  rows = {c: [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()] for c, w in runs.items()}
  per_seed = {seed: compare.run_summary(rows[c], analyze_run(runs[c])) for seed, c in enumerate(runs)}
  assert per_seed[1]["val_bpb"] == [r for r in rows["mhc"] if "val_bpb" in r][-1]["val_bpb"]
  assert abs(per_seed[0]["max_composite_forward"] - 1) > 1e-3 and abs(per_seed[1]["max_composite_forward"] - 1) < 1e-5
  result = compare.aggregate(per_seed)
  for key in compare.METRICS:
    values = [per_seed[0][key], per_seed[1][key]]
    assert result[key]["mean"] == pytest.approx(np.mean(values))
    assert result[key]["std"] == pytest.approx(np.std(values, ddof=1))
  table = compare.results_table({"mixed": result})
  assert f"{result['val_bpb']['mean']:.4f} ± {result['val_bpb']['std']:.4f}" in table
  assert compare.plot_curves({"mixed": list(rows.values())}, tmp_path / "c.png").stat().st_size > 0
  with pytest.raises(SystemExit):
    compare.main(["--workdir", str(tmp_path), "--variants", "resnet"])
