"""The Makefile's choice of Python: the first interpreter >= 3.12 that runs, or a clear error."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHOW = "show-python: ; @echo $(PYTHON)"


def _fake_python(path: pathlib.Path, version: tuple[int, int]) -> None:
  """An interpreter that reports ``version`` to the Makefile's probe (and runs nothing else)."""
  path.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.exit({version} < (3, 12))'\n")
  path.chmod(0o755)


@pytest.fixture
def bare_path(tmp_path):
  """A PATH with the shell tools make needs and no Python, and an empty pyenv root."""
  tools = tmp_path / "tools"
  tools.mkdir()
  for tool in ("sh", "ls", "sort", "rm", "echo", "test"):
    found = shutil.which(tool)
    if found:
      (tools / tool).symlink_to(found)
  (tmp_path / "pyenv").mkdir()
  return tmp_path, tools


def _make(args, tmp_path, path_dirs):
  env = {"PATH": os.pathsep.join(map(str, path_dirs)), "PYENV_ROOT": str(tmp_path / "pyenv"),
         "HOME": str(tmp_path)}
  return subprocess.run([shutil.which("make"), "-s", "-C", str(ROOT), *args], env=env,
                        capture_output=True, text=True, timeout=60)


def test_picks_the_first_python_that_is_new_enough(bare_path):
  tmp_path, tools = bare_path
  bin_ = tmp_path / "bin"
  bin_.mkdir()
  _fake_python(bin_ / "python3.13", (3, 11))  # a broken or mislabelled python3.13 is skipped
  _fake_python(bin_ / "python3.12", (3, 12))
  run = _make(["--eval", SHOW, "show-python"], tmp_path, [bin_, tools])
  assert run.stdout.strip() == str(bin_ / "python3.12"), run.stderr
  version_dir = tmp_path / "pyenv" / "versions" / "3.14.0" / "bin"
  version_dir.mkdir(parents=True)
  _fake_python(version_dir / "python3", (3, 14))
  (bin_ / "python3.12").unlink()
  run = _make(["--eval", SHOW, "show-python"], tmp_path, [bin_, tools])
  assert run.stdout.strip() == str(version_dir / "python3"), run.stderr


def test_without_one_it_says_what_to_install(bare_path):
  tmp_path, tools = bare_path
  bin_ = tmp_path / "bin"
  bin_.mkdir()
  _fake_python(bin_ / "python3", (3, 11))
  run = _make(["--eval", SHOW, "show-python"], tmp_path, [bin_, tools])
  assert run.stdout.strip() == ""
  run = _make(["VENV=" + str(tmp_path / "venv"), "install"], tmp_path, [bin_, tools])
  assert run.returncode != 0
  assert "needs Python >= 3.12 and found none" in run.stderr
  assert "pyenv install 3.12" in run.stderr and "PYTHON=/path/to/python3.12" in run.stderr
  assert not (tmp_path / "venv").exists()
