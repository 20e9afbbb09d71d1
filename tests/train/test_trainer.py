"""The training loop: resumes bit-identically, guards NaN, survives corrupt checkpoints.

The runs here are on one device. tests/train/test_sharded_training.py covers learning, the
meshes (data parallel over 8 devices: the configs' default mesh) and several processes.
"""

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mhc_jax.train import config as config_lib
from mhc_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = config_lib.load_config_file(ROOT / "configs/tiny_cpu.py")
# Small and fast; real text from the default corpus (shared/ or the registry cache).
FAST = TINY.replace(train_steps=30, eval_every=10, checkpoint_every=10, log_every=1, eval_batches=2,
                    mesh=(1, 1, 1))


def strip(rows):
  """Metrics without wall-clock throughput, for exact comparison."""
  return [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in rows]


def _rows(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  rows = trainer.train(FAST, workdir, progress=False)
  return workdir, rows


def test_resume_after_crash_is_bit_identical(tmp_path, reference_run, monkeypatch):
  _, want = reference_run
  real_step = trainer.make_train_step

  def crashing_step(*args):  # dies after step 17, between the saves at 10 and 20
    step_fn = real_step(*args)
    def step(state, batch):
      if int(state["step"]) == 17:
        raise RuntimeError("simulated crash")
      return step_fn(state, batch)
    return step

  monkeypatch.setattr(trainer, "make_train_step", crashing_step)
  with pytest.raises(RuntimeError, match="simulated crash"):
    trainer.train(FAST, tmp_path, progress=False)
  monkeypatch.setattr(trainer, "make_train_step", real_step)
  got = trainer.train(FAST, tmp_path, progress=False)
  assert strip(got) == strip(want)  # exact float equality: bit-identical losses


def test_ctrl_c_saves_and_resumes_bit_identically(tmp_path, reference_run, monkeypatch):
  _, want = reference_run
  real_step = trainer.make_train_step

  def interrupted_step(*args):
    step_fn = real_step(*args)
    def step(state, batch):
      if int(state["step"]) == 13:
        raise KeyboardInterrupt
      return step_fn(state, batch)
    return step

  monkeypatch.setattr(trainer, "make_train_step", interrupted_step)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(FAST, tmp_path, progress=False)
  assert 13 in [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  monkeypatch.setattr(trainer, "make_train_step", real_step)
  got = trainer.train(FAST, tmp_path, progress=False)
  assert strip(got) == strip(want)


def test_kill_9_between_saves_then_resume_is_bit_identical(tmp_path, reference_run):
  """A subprocess on one device of the suite's 8 (as the in-process reference run), killed between saves."""
  def cmd(workdir):
    args = [sys.executable, str(ROOT / "experiments/train.py"), "--config", str(ROOT / "configs/tiny_cpu.py"),
            "--workdir", str(workdir), "--no-progress"]
    return args + [f"--config.{k}={getattr(FAST, k)}" for k in
                   ("train_steps", "eval_every", "checkpoint_every", "log_every", "eval_batches", "mesh")]

  env = dict(os.environ, JAX_PLATFORMS="cpu")  # XLA's thread pools as in this process: bitwise the same
  want = reference_run[1]
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(cmd(workdir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(json.loads(l)["step"] >= 14 for l in metrics.read_text().splitlines()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  last = _rows(workdir)[-1]["step"]
  assert 14 <= last < 30  # killed mid-run, past the step-10 save
  subprocess.run(cmd(workdir), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert strip(_rows(workdir)) == strip(want)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  real_step = trainer.make_train_step

  def poisoned_step(*args):
    step_fn = real_step(*args)
    def step(state, batch):
      state, metrics = step_fn(state, batch)
      if int(state["step"]) >= 15:
        metrics = dict(metrics, loss=metrics["loss"] * np.nan)
      return state, metrics
    return step

  monkeypatch.setattr(trainer, "make_train_step", poisoned_step)
  with pytest.raises(trainer.TrainingDiverged, match=r"loss is nan at step 15.*step 10"):
    trainer.train(FAST, tmp_path, progress=False)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [10]
  model, cfg = trainer.load_for_inference(tmp_path)  # the kept checkpoint is readable
  assert cfg == FAST


def test_ctrl_c_with_an_unread_nan_loss_saves_nothing(tmp_path, monkeypatch):
  real_step = trainer.make_train_step

  def poisoned_then_interrupted(*args):  # loss NaN at step 15, Ctrl-C while step 16 is dispatched
    step_fn = real_step(*args)
    def step(state, batch):
      if int(state["step"]) == 15:
        raise KeyboardInterrupt
      state, metrics = step_fn(state, batch)
      if int(state["step"]) == 15:
        metrics = dict(metrics, loss=metrics["loss"] * np.nan)
      return state, metrics
    return step

  monkeypatch.setattr(trainer, "make_train_step", poisoned_then_interrupted)
  with pytest.raises(KeyboardInterrupt):
    trainer.train(FAST, tmp_path, progress=False)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [10]
  assert _rows(tmp_path)[-1]["step"] == 14


def test_metrics_are_read_one_step_late(tmp_path, monkeypatch):
  """The host reads step t's loss after dispatching step t + 1, except at eval / checkpoint steps
  (their state is needed before the next step donates it)."""
  real_step = trainer.make_train_step
  dispatched, reads = [0], []

  class Loss:
    def __init__(self, value, step):
      self.value, self.step = value, step

    def __float__(self):
      reads.append((self.step, dispatched[0]))
      return float(self.value)

  def probed_step(*args):
    step_fn = real_step(*args)
    def step(state, batch):
      dispatched[0] += 1
      state, metrics = step_fn(state, batch)
      return state, dict(metrics, loss=Loss(metrics["loss"], dispatched[0]))
    return step

  monkeypatch.setattr(trainer, "make_train_step", probed_step)
  trainer.train(FAST.replace(train_steps=12), tmp_path, progress=False)
  assert reads == [(s, s if s in (10, 12) else s + 1) for s in range(1, 13)]


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path, reference_run, capsys):
  ref_dir, want = reference_run
  shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
  newest = tmp_path / "checkpoints" / "30" / "state"
  for f in newest.rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"\0garbage" * 8)
  got = trainer.train(FAST.replace(train_steps=30), tmp_path, progress=False)
  err = capsys.readouterr().err
  assert "checkpoint at step 30" in err and "unreadable" in err
  assert any((tmp_path / "checkpoints_corrupt").iterdir())  # moved aside, not deleted
  assert strip(got) == strip(want)  # retrained 21..30 from step 20, same numbers


def test_raising_train_steps_continues(tmp_path, reference_run):
  ref_dir, want = reference_run
  shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
  rows = trainer.train(FAST.replace(train_steps=35), tmp_path, progress=False)
  assert [r["step"] for r in rows][-5:] == [31, 32, 33, 34, 35]
  assert strip(rows[:30]) == strip(want)


def test_different_model_in_workdir_is_refused(tmp_path, reference_run):
  ref_dir, _ = reference_run
  shutil.copytree(ref_dir, tmp_path, dirs_exist_ok=True)
  bigger = FAST.replace(model=FAST.model.replace(d_model=32))
  with pytest.raises(ValueError, match="model.d_model: checkpoint 64 vs config 32"):
    trainer.train(bigger, tmp_path, progress=False)


def test_checkpoint_from_before_a_new_model_field_still_resumes():
  class Saved:  # a checkpoint whose config lacks a field added since, e.g. mhc_res_projection
    def __init__(self, model):
      self.model = model

    def steps(self):
      return [10]

    def read_config(self, step):
      return {"model": self.model}

  saved = json.loads(FAST.to_json())["model"]
  del saved["mhc_res_projection"]
  trainer._check_same_model(Saved(saved), FAST, pathlib.Path("w"))  # the default: the same model
  lite = FAST.replace(model=FAST.model.replace(num_streams=3, mhc_res_projection="permutations"))
  saved["num_streams"] = 3
  with pytest.raises(ValueError, match="model.mhc_res_projection: checkpoint 'sinkhorn' vs config 'permutations'"):
    trainer._check_same_model(Saved(saved), lite, pathlib.Path("w"))


def test_sequence_longer_than_the_data_fails_naming_seq_len(tmp_path):
  text = tmp_path / "small.txt"
  text.write_text("a tiny corpus. " * 20)
  with pytest.raises(ValueError, match="seq_len"):
    trainer.train(FAST.replace(data_source=str(text), seq_len=4096), tmp_path / "run", progress=False)


def test_sample_from_checkpoint(reference_run):
  from mhc_jax.train import sampling
  model, cfg = trainer.load_for_inference(reference_run[0])
  text = sampling.generate(model, "ROMEO:", 20, context=cfg.seq_len, temperature=0.0)
  assert len(text.encode("utf-8", errors="replace")) >= 10
