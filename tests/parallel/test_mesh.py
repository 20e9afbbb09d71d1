"""The mesh, the rule sets and the start-up checks: bad values fail early and name themselves."""

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mhc_jax import parallel
from mhc_jax.models import ModelConfig, TransformerLM
from mhc_jax.train import trainer
from mhc_jax.train.presets import tiny_cpu


def test_minus_one_takes_the_devices_left_over():
  assert parallel.resolve_shape((-1, 2, 1), 8) == (4, 2, 1)
  assert parallel.make_mesh((2, -1, 2)).axis_sizes == (1, 2, 2, 2)  # (stage, data, fsdp, tensor)
  assert parallel.make_mesh((-1, 1, 1), stages=2).axis_sizes == (2, 4, 1, 1)
  assert parallel.make_mesh((1, 1, 1)).size == 1  # one process may use fewer devices than it has


@pytest.mark.parametrize("shape, match", [
    ((3, -1, 1), "8 devices do not split into 3"),
    ((4, 4, 1), "needs 16 devices; there are 8"),
    ((2, 2), "one size per axis"),
    ((-1, -1, 2), "at most one -1"),
])
def test_bad_mesh_shapes(shape, match):
  with pytest.raises(ValueError, match=match):
    parallel.resolve_shape(shape, 8)


def test_every_parameter_has_logical_axes_and_the_rules_place_them():
  for connection, readout in (("mhc", "head"), ("hc", "sum"), ("residual", "sum")):
    cfg = ModelConfig(connection=connection, readout=readout, num_layers=2, d_model=64, num_heads=2)
    params = nnx.state(nnx.eval_shape(lambda: TransformerLM(cfg, rngs=nnx.Rngs(0))))
    for variable in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
      names = parallel.rules.logical_axes(variable)
      assert len(names) <= variable.ndim and set(names) <= set(parallel.LOGICAL_AXES) | {None}
  rules = parallel.RULE_SETS["fsdp_tp"]
  assert parallel.spec(("layers", "embed", "mlp"), rules) == P("stage", "fsdp", "tensor")
  assert parallel.spec(("stream_embed", "coefficients"), rules, shape=(2, 256, 24)) == P(None, "fsdp", None)


def test_a_dimension_the_mesh_does_not_divide_is_named():
  mesh = parallel.make_mesh((1, 8, 1))
  with pytest.raises(ValueError, match=r"parameter w of shape \(12, 4\): axis 0 \('embed', 12\) does not split"):
    parallel.spec(("embed", None), parallel.RULE_SETS["fsdp"], (12, 4), mesh, "parameter w")


def test_a_batch_that_does_not_split_is_refused():
  with pytest.raises(ValueError, match=r"batch_size=12: must split evenly over the 8 data-parallel"):
    trainer.make_run_mesh(tiny_cpu(batch_size=12, mesh=(8, 1, 1)))
  assert trainer.make_run_mesh(tiny_cpu(batch_size=12, mesh=(2, 2, 2), sharding="fsdp_tp")).size == 8


def test_distributed_flags_go_together():
  with pytest.raises(ValueError, match="go together"):
    parallel.initialize_distributed("127.0.0.1:1234", None, None)
  with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
    parallel.initialize_distributed("127.0.0.1:1234", 2, 2)
  assert parallel.initialize_distributed() is False  # no flags, no cluster: one process, nothing started
