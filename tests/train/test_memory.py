"""The AOT memory check: per-device bytes follow the shardings, and XLA's own count agrees.

Compiles tiny_cpu's train step (never runs it) on the suite's 8 fake devices, as pure data
parallel and as FSDP over all 8.
"""

import importlib.util
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mhc_jax import parallel
from mhc_jax.models import TransformerLM
from mhc_jax.train import config as config_lib
from mhc_jax.train import memory

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = config_lib.load_config_file(ROOT / "configs/tiny_cpu.py")


@pytest.fixture(scope="module")
def reports():
  return {rules: memory.train_step_memory(TINY.replace(mesh=mesh, sharding=rules), parallel.make_mesh(mesh))
          for rules, mesh in (("dp", (8, 1, 1)), ("fsdp", (1, 8, 1)))}


def _param_bytes():
  params = nnx.state(nnx.eval_shape(lambda: TransformerLM(TINY.model, rngs=nnx.Rngs(0))))
  return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(params))


def test_data_parallel_holds_everything_on_every_device(reports):
  dp = reports["dp"]
  assert dp.parameters == _param_bytes()
  # Adam's two moments, plus three int32 counters: the train step, Adam's count, the schedule's count.
  assert dp.optimizer_state == 2 * dp.parameters + 3 * 4
  assert dp.batch == TINY.batch_size // 8 * (TINY.seq_len + 1) * 4
  assert dp.temp > 0
  assert dp.argument_bytes_by_xla == dp.parameters + dp.optimizer_state + dp.batch
  assert dp.total == dp.parameters + dp.optimizer_state + dp.batch + dp.temp + dp.unaliased_outputs


def test_fsdp_splits_parameters_and_optimizer_state(reports):
  dp, fsdp = reports["dp"], reports["fsdp"]
  # Every matrix splits over its d_model axis; only norm scales, gates and biases stay whole.
  assert dp.parameters / 8 < fsdp.parameters < dp.parameters / 6
  assert dp.optimizer_state / 8 < fsdp.optimizer_state < dp.optimizer_state / 6
  assert fsdp.batch == dp.batch
  assert fsdp.argument_bytes_by_xla == fsdp.parameters + fsdp.optimizer_state + fsdp.batch


def test_the_script_prints_the_table(capsys, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # the script sets its own
  spec = importlib.util.spec_from_file_location("aot_script", ROOT / "experiments/aot.py")
  aot = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(aot)
  assert aot.main(["--config", str(ROOT / "configs/tiny_fsdp_tp_cpu.py"), "--devices", "8"]) == 0
  out = capsys.readouterr().out
  for line in ("parameters", "optimizer state", "activations / temp", "total", "fake CPU devices",
               "fits in 80 GB"):
    assert line in out
