"""Sharded training: the state is created sharded, and every parallel layout trains the same losses.

The reference is configs/tiny_cpu.py on one device (its first 24 steps, for the suite's time).
Its per-step train losses must agree to 1e-4 relative with:
  * tiny_cpu as it is on the suite's 8 fake devices (data parallel; "auto" runs the C++
    kernels per shard), which must also learn and write its plots;
  * configs/tiny_fsdp_tp_cpu.py (data 2 x fsdp 2 x tensor 2);
  * that run's step-16 checkpoint, saved on 8 devices and resumed on one;
  * configs/tiny_pipeline_cpu.py (2 pipeline stages x data 4), which also resumes bit-exactly;
  * tiny_cpu as 2 processes on 127.0.0.1 (jax.distributed, CPU collectives), one device each.
"""

import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mhc_jax import parallel
from mhc_jax.train import config as config_lib
from mhc_jax.train import trainer
from mhc_jax.train.optim import make_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The first 24 of the configs' 60 steps (the suite's time), logged, evaluated and saved every 8.
SHORT = dict(train_steps=24, log_every=1, eval_every=8, checkpoint_every=8)
TINY = config_lib.load_config_file(ROOT / "configs/tiny_cpu.py").replace(**SHORT)
FSDP_TP = config_lib.load_config_file(ROOT / "configs/tiny_fsdp_tp_cpu.py").replace(**SHORT)
PIPELINE = config_lib.load_config_file(ROOT / "configs/tiny_pipeline_cpu.py").replace(**SHORT)
ONE_DEVICE = TINY.replace(mesh=(1, 1, 1))
RTOL = 1e-4


def _losses(rows, after=0):
  return [r["train_loss"] for r in rows if r["step"] > after]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  return trainer.train(ONE_DEVICE, tmp_path_factory.mktemp("one_device"), progress=False)


@pytest.fixture(scope="module")
def fsdp_tp(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fsdp_tp")
  return workdir, trainer.train(FSDP_TP, workdir, progress=False)


@pytest.fixture(scope="module")
def pipelined(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pipeline")
  return workdir, trainer.train(PIPELINE, workdir, progress=False)


def test_the_state_is_created_sharded():
  """Every parameter and Adam moment lives in shards of the size its rule gives, never whole."""
  tx = make_optimizer(FSDP_TP)
  mesh = parallel.make_mesh(FSDP_TP.mesh)
  _, state, shardings = trainer.init_state(FSDP_TP, tx, mesh)
  params = state["params"]
  mu = state["opt_state"][1][0].mu
  # d_model (embed) over fsdp; heads, mlp and vocab over tensor; the layer axis over the stages
  # (one here, so whole)
  expected = {
      ("blocks", "attn", "sublayer", "qkv", "kernel"): P("stage", "fsdp", "tensor"),
      ("blocks", "mlp", "sublayer", "down", "kernel"): P("stage", "tensor", "fsdp"),
      ("blocks", "attn", "phi"): P("stage", "fsdp", None),
      ("blocks", "attn", "bias"): P("stage", None),
      ("embed", "embedding"): P("tensor", "fsdp"),
      ("unembed", "kernel"): P("fsdp", "tensor"),
  }
  for path, spec in expected.items():
    for tree in (params, mu):
      leaf = tree
      for key in path:
        leaf = leaf[key]
      assert leaf.sharding.spec == spec, path
  assert state["step"].sharding.spec == P()
  for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
    assert leaf.sharding == sharding
    for shard in leaf.addressable_shards:  # each device holds its shard only
      assert shard.data.shape == sharding.shard_shape(leaf.shape)
  qkv = params["blocks"]["attn"]["sublayer"]["qkv"]["kernel"]
  assert qkv.addressable_shards[0].data.shape == (2, 64 // 2, 3 * 64 // 2)


def test_data_parallel_on_8_devices_learns_the_same_losses(one_device, tmp_path):
  assert jax.device_count() == 8 and TINY.mesh == (-1, 1, 1)
  rows = trainer.train(TINY, tmp_path, progress=False)
  val = [r for r in rows if "val_loss" in r]
  assert [r["step"] for r in val] == [8, 16, 24]
  assert val[-1]["val_loss"] < val[0]["val_loss"] < math.log(256)
  assert all(k in rows[0] for k in ("step", "train_loss", "grad_norm", "tokens_per_sec"))
  for name in ("loss.png", "grad_norm.png"):
    assert (tmp_path / "plots" / name).stat().st_size > 10_000
  assert json.loads((tmp_path / "config.json").read_text())["train_steps"] == 24
  assert len(rows) == 24
  np.testing.assert_allclose(_losses(rows), _losses(one_device), rtol=RTOL)


def test_fsdp_tp_on_8_devices_matches_one_device(one_device, fsdp_tp):
  _, rows = fsdp_tp
  assert len(rows) == 24
  np.testing.assert_allclose(_losses(rows), _losses(one_device), rtol=RTOL)


def test_saved_on_8_devices_resumed_on_one(one_device, fsdp_tp, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(fsdp_tp[0], workdir)
  shutil.rmtree(workdir / "checkpoints" / "24")  # resume from step 16, saved by the fsdp_tp run
  rows = trainer.train(ONE_DEVICE, workdir, progress=False)
  assert [r["step"] for r in rows] == list(range(1, 25))
  np.testing.assert_allclose(_losses(rows, after=16), _losses(one_device, after=16), rtol=RTOL)


def test_pipeline_matches_one_device_and_resumes_bit_exactly(one_device, pipelined, tmp_path):
  workdir, rows = pipelined
  assert len(rows) == 24
  np.testing.assert_allclose(_losses(rows), _losses(one_device), rtol=RTOL)
  val = [r["val_loss"] for r in rows if "val_loss" in r]
  np.testing.assert_allclose(val, [r["val_loss"] for r in one_device if "val_loss" in r], rtol=RTOL)
  # Each stage holds its own block: the stacked parameters are split over the stage axis.
  mesh = trainer.make_run_mesh(PIPELINE)
  assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == {"stage": 2, "data": 4, "fsdp": 1, "tensor": 1}
  _, state, _ = trainer.init_state(PIPELINE, make_optimizer(PIPELINE), mesh)
  qkv = state["params"]["blocks"]["attn"]["sublayer"]["qkv"]["kernel"]
  assert qkv.sharding.spec[0] == "stage" and qkv.addressable_shards[0].data.shape[0] == 1
  # Resumed from its step-16 checkpoint, the pipeline gives the very same numbers.
  shutil.copytree(workdir, tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "24")
  resumed = trainer.train(PIPELINE, tmp_path / "resumed", progress=False)
  assert [r["step"] for r in resumed] == list(range(1, 25))
  strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in rs if r["step"] > 16]
  assert strip(resumed) == strip(rows)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_device(one_device, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
  env["JAX_PLATFORMS"] = "cpu"
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, str(ROOT / "experiments/train.py"), "--config", str(ROOT / "configs/tiny_cpu.py"),
       "--workdir", str(tmp_path), "--no-progress", *(f"--config.{k}={v}" for k, v in SHORT.items()),
       "--coordinator_address", address,
       "--num_processes", "2", "--process_id", str(i)],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
  errors = [p.communicate(timeout=600)[1].decode() for p in procs]
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-3000:]
  assert "2 process(es), 2 device(s)" in errors[0]
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 25))  # process 0 alone wrote them: no row twice
  np.testing.assert_allclose(_losses(rows), _losses(one_device), rtol=RTOL)
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [8, 16, 24]
