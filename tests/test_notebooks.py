"""The notebooks (notebooks/*.py, jupytext percent scripts) run top to bottom in a fresh kernel.

Each one is converted with jupytext and executed by nbclient on an ipykernel started from this
interpreter (the .venv's, where mhc_jax is installed), with one CPU device: the kernel does not get
the test suite's 8 fake devices. Notebooks 02 and 03 read tiny residual, HC and mHC runs trained here,
passed through ``MHC_NOTEBOOK_RUNS``. A notebook passes when no cell raises and it drew the figures
it should (PNG outputs; their number per notebook is pinned below).
"""

import base64
import concurrent.futures
import json
import os
import pathlib
import re

from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
import jupytext
import nbclient
from nbclient.exceptions import CellExecutionError
import pytest

from mhc_jax.train import config as config_lib
from mhc_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "mhc_jax_tests"
# The figures each notebook draws: PNG outputs, inline matplotlib and the library's PNGs alike.
FIGURES = {"01_mhc_math.py": 8, "02_per_layer_maps.py": 5, "03_training_comparison.py": 3}
LABELS = {"residual": "residual", "HC": "hc", "mHC": "mhc"}  # label -> connection
# tests/analysis/test_runs.py's tiny runs (eval_every aside, which changes no compiled program), so
# that in one test session the train steps come from the shared compilation cache.
TINY = config_lib.load_config_file(ROOT / "configs/tiny_cpu.py").replace(
    train_steps=3, eval_every=1, checkpoint_every=3, log_every=1, eval_batches=1, mesh=(1, 1, 1),
    learning_rate=3e-2)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
  """A kernelspec folder whose one kernel runs this interpreter (``sys.executable``), whatever
  kernelspecs the user or the system has installed."""
  folder = tmp_path_factory.mktemp("kernels")
  write_kernel_spec(folder / KERNEL)
  return folder


def _train_runs(tmp_path_factory) -> dict:
  """Tiny residual, HC and mHC runs, 3 steps each, as the ``MHC_NOTEBOOK_RUNS`` dict."""
  out = {}
  for label, connection in LABELS.items():
    workdir = tmp_path_factory.mktemp(connection)
    trainer.train(TINY.replace(model=TINY.model.replace(connection=connection)), workdir, progress=False)
    out[label] = str(workdir)
  return out


@pytest.fixture(scope="module")
def executed(tmp_path_factory, kernels):
  """``(runs, {notebook: future of the executed notebook})``. 01 needs no runs, so it executes while
  they train (its kernel is another process; this thread only waits on it), then 02 and 03 together."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    futures = {"01_mhc_math.py": pool.submit(_execute, "01_mhc_math.py", kernels, None)}
    runs = _train_runs(tmp_path_factory)
    for name in sorted(FIGURES):
      futures.setdefault(name, pool.submit(_execute, name, kernels, runs))
  return runs, futures


def _kernel_env(runs: dict | None) -> dict:
  env = dict(os.environ)
  # One device, as in a user's Jupyter; the notebooks need no mesh.
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
  env.pop("MPLBACKEND", None)  # the kernel's inline backend puts the figures into the outputs
  env.pop("MHC_NOTEBOOK_RUNS", None)
  if runs is not None:
    env["MHC_NOTEBOOK_RUNS"] = json.dumps(runs)
  return env


def _execute(name: str, kernels: pathlib.Path, runs: dict | None):
  """Runs notebooks/<name> in a fresh kernel started in notebooks/ (as Jupyter does); returns it."""
  nb = jupytext.read(NOTEBOOKS / name)
  km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
  client = nbclient.NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute(cleanup_kc=True, env=_kernel_env(runs))
  return nb


def _outputs(nb, mime: str) -> list:
  return [out["data"][mime] for cell in nb.cells if cell.cell_type == "code"
          for out in cell.get("outputs", []) if mime in out.get("data", {})]


def _text(nb) -> str:
  parts = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      parts.append(out.get("text", ""))
      parts.extend(out.get("data", {}).get(m, "") for m in ("text/plain", "text/markdown"))
  return "\n".join(parts)


def test_notebooks_are_paired_percent_scripts():
  names = sorted(p.name for p in NOTEBOOKS.glob("*.py"))
  assert names == sorted(FIGURES), f"pin the figures of every notebook in FIGURES: {names}"
  for name in names:
    header = (NOTEBOOKS / name).read_text().split("# ---\n")[1]
    assert "formats: ipynb,py:percent" in header and "format_name: percent" in header, name
  ignored = (ROOT / ".gitignore").read_text().splitlines()
  assert "notebooks/*.ipynb" in ignored and ".ipynb_checkpoints/" in ignored


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_draws_its_figures(name, executed):
  runs, futures = executed
  nb = futures[name].result()  # raises the CellExecutionError of a cell that failed
  images = _outputs(nb, "image/png")
  assert len(images) == FIGURES[name], f"{name} drew {len(images)} figures, expected {FIGURES[name]}"
  for png in images:
    data = base64.b64decode(png)
    assert data.startswith(b"\x89PNG") and len(data) > 5_000
  if name == "01_mhc_math.py":  # the kernel has one device: the notebooks need no mesh
    assert "on [CpuDevice(id=0)]" in _text(nb)
  else:  # the run notebooks name every run in their tables
    markdown = "\n".join(_outputs(nb, "text/markdown"))
    for label in runs:
      assert f"| {label} |" in markdown, f"{name}: no table row for {label}"


def test_a_missing_run_is_named_with_the_command_that_makes_it(tmp_path, executed, kernels):
  runs, _ = executed
  nowhere = tmp_path / "no_such_run"
  with pytest.raises(CellExecutionError) as e:
    _execute("03_training_comparison.py", kernels, {"mHC": runs["mHC"], "HC": str(nowhere)})
  assert e.value.ename == "FileNotFoundError"
  assert f"HC in {nowhere}." in e.value.evalue and "make trio" in e.value.evalue
  assert runs["mHC"] not in e.value.evalue  # the run that is there is not named
