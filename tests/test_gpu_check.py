"""experiments/gpu_check.sh: its dry run on the CPU (every step, tiny shapes) and its option checks.

The dry run takes a minute or two on 2 cores, so it runs once per module and the tests read its
CSV. It runs without the wheels folder (a dry run must not need it) and without the 8 fake devices
that conftest.py asks XLA for.
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "gpu_check.sh"
STEPS = ("env", "kernel_tests", "bench_kernels", "bench_step", "train", "transformer_engine")


def _env() -> dict[str, str]:
  """This environment without conftest's fake-device flag and without a preset output folder."""
  env = {k: v for k, v in os.environ.items() if k not in ("OUT", "JAX_PLATFORMS")}
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                        env=env or _env(), timeout=timeout, check=False)


def _rows(out: pathlib.Path) -> list[dict]:
  with open(out / "gpu_check.csv", newline="") as f:
    return list(csv.DictReader(f))


def _value(rows: list[dict], step: str, name: str, unit: str) -> float:
  found = [r for r in rows if (r["step"], r["name"], r["unit"]) == (step, name, unit)]
  assert len(found) == 1, f"expected one {step}/{name}/{unit} row, got {found}"
  return float(found[0]["value"])


def _positive(value: float) -> bool:
  return math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
  out = tmp_path_factory.mktemp("gpu_check")
  result = _run("--dry-run", "--out", str(out), "--python", sys.executable,
                "--wheels", str(out / "no_wheels"), timeout=900)
  return result, out


def test_dry_run_passes_every_step(dry_run):
  result, out = dry_run
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
  assert (out / "gpu_check.log").stat().st_size > 0
  rows = _rows(out)
  assert list(rows[0]) == ["step", "name", "value", "unit", "detail"]
  for step in STEPS:
    assert _value(rows, step, "exit_status", "rc") == 0, step
    assert _value(rows, step, "wall_time", "s") >= 0, step
  assert "every step passed" in result.stdout
  assert "summary" in result.stdout


def test_dry_run_records_the_figures_of_every_step(dry_run):
  _, out = dry_run
  rows = _rows(out)
  assert _value(rows, "env", "devices", "devices") >= 1
  assert _value(rows, "kernel_tests", "passed", "tests") > 0
  assert _value(rows, "kernel_tests", "failed", "tests") == 0
  assert _positive(_value(rows, "bench_kernels", "copy_bandwidth", "GB/s"))
  for op in ("coefficients", "pre", "post"):
    for mode in ("fwd", "fwd+bwd"):
      assert _positive(_value(rows, "bench_kernels", f"{op}.xla.{mode}", "ms"))
      assert _positive(_value(rows, "bench_kernels", f"{op}.xla.{mode}", "of_copy"))
  assert _positive(_value(rows, "bench_kernels", "coefficients.xla.fwd", "x_gemm"))
  assert _value(rows, "bench_step", "residual.x_residual", "ratio") == 1.0
  for connection in ("hc", "mhc"):
    assert _positive(_value(rows, "bench_step", f"{connection}.x_residual", "ratio"))
    assert _positive(_value(rows, "bench_step", f"{connection}.tokens_per_s", "tokens/s"))
  assert _positive(_value(rows, "train", "tokens_per_s", "tokens/s"))
  assert _value(rows, "train", "steps", "steps") == 10
  assert _positive(_value(rows, "train", "val_bpb", "bits/byte"))
  assert _value(rows, "transformer_engine", "present", "bool") in (0, 1)
  assert (out / "gpu_check_work" / "train" / "metrics.jsonl").exists()
  assert not list((out / "gpu_check_work" / "train").glob("checkpoints*")), "the checkpoints are deleted"


def test_a_failing_step_is_recorded_and_the_next_one_still_runs(tmp_path):
  env = _env() | {"GPU_CHECK_TIMEOUT_KERNEL_TESTS": "1"}  # pytest cannot even import jax in 1 s
  result = _run("--dry-run", "--out", str(tmp_path), "--python", sys.executable,
                "--only", "kernel_tests,transformer_engine", env=env, timeout=300)
  assert result.returncode == 1, result.stdout + result.stderr
  assert "FAILED: kernel_tests" in result.stdout
  rows = _rows(tmp_path)
  assert _value(rows, "kernel_tests", "exit_status", "rc") in (124, 137)
  assert _value(rows, "transformer_engine", "exit_status", "rc") == 0
  assert not [r for r in rows if r["step"] in ("bench_kernels", "bench_step", "train")]


@pytest.mark.parametrize("args, env, message", [
    (["--frobnicate"], {}, "unknown option '--frobnicate'"),
    (["--out"], {}, "--out needs a value"),
    (["--only", "train,bogus"], {}, "--only: unknown step 'bogus'"),
    (["--dry-run", "--python", "/no/such/python"], {}, "--python '/no/such/python' does not run"),
    (["--dry-run"], {"GPU_CHECK_TIMEOUT_TRAIN": "soon"}, "GPU_CHECK_TIMEOUT_TRAIN='soon'"),
    (["--dry-run"], {"GPU_CHECK_TEST_WORKERS": "many"}, "GPU_CHECK_TEST_WORKERS='many'"),
])
def test_bad_options_are_refused_with_a_clear_message(tmp_path, args, env, message):
  result = _run(*args, "--out", str(tmp_path / "out"), env=_env() | env)
  assert result.returncode == 2
  assert message in result.stderr
  assert not (tmp_path / "out").exists(), "nothing is written before the options are checked"


def test_help_names_every_step():
  result = _run("--help")
  assert result.returncode == 0
  for step in STEPS:
    assert step in result.stdout
