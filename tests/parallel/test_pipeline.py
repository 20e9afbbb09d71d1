"""The GPipe pipeline: on 4 stages with more microbatches than stages, the loss and every gradient
equal the sequential model's; bad pipelines are refused by name."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from mhc_jax import ops, parallel
from mhc_jax.models import ModelConfig, TransformerLM
from mhc_jax.parallel import pipeline
from mhc_jax.train import trainer
from mhc_jax.train.presets import tiny_cpu

# Eight blocks, two per stage; recomputation in segments that stay within a stage.
CFG = ModelConfig(vocab_size=64, num_layers=8, d_model=32, num_heads=2, num_streams=4)
# Within each stage, FSDP over 2 devices (tiny_pipeline_cpu covers data parallelism).
STAGES, MICROBATCHES, WITHIN_STAGE = 4, 8, (1, 2, 1)


def _value_and_grad(cfg, params, graphdef, tokens, blocks=None):
  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens[:, :-1], blocks=blocks)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
  return jax.jit(jax.value_and_grad(loss))(params)


def test_four_stages_equal_the_sequential_model():
  ops.prepare(CFG.implementation)
  graphdef, params = nnx.split(TransformerLM(CFG, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(params)
  tokens = jax.random.randint(jax.random.key(1), (16, 17), 0, CFG.vocab_size)
  loss, grads = _value_and_grad(CFG, params, graphdef, tokens)

  piped = CFG.replace(mhc_recompute="auto")
  assert piped.recompute_blocks(STAGES) == 2  # a segment is a whole stage here
  graphdef_r, _ = nnx.split(nnx.eval_shape(lambda: TransformerLM(piped, rngs=nnx.Rngs(0))))
  mesh = parallel.make_mesh(WITHIN_STAGE, stages=STAGES)
  abstract = nnx.state(nnx.eval_shape(lambda: TransformerLM(piped, rngs=nnx.Rngs(0))))
  shardings = parallel.param_shardings(abstract, parallel.RULE_SETS["fsdp"], mesh)
  with jax.set_mesh(mesh), ops.stream_axes(("data", "fsdp")):
    sharded = jax.device_put(params, shardings)
    loss_p, grads_p = _value_and_grad(piped, sharded, graphdef_r, tokens,
                                      pipeline.pipelined_blocks(STAGES, MICROBATCHES))
  # Each device holds its stage's 2 blocks, and half of each block's d_model rows.
  phi = sharded["blocks"]["mlp"]["phi"]
  assert phi.addressable_shards[0].data.shape == (CFG.num_layers // STAGES, phi.shape[1] // 2, phi.shape[2])
  np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_p), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_a_pipeline_without_its_mesh_says_so():
  graphdef, params = nnx.split(TransformerLM(CFG, rngs=nnx.Rngs(0)))
  tokens = jax.random.randint(jax.random.key(1), (16, 17), 0, CFG.vocab_size)
  with pytest.raises(ValueError, match=r"a 4-stage pipeline runs on a mesh with a 'stage' axis of size 4"):
    nnx.merge(graphdef, params)(tokens, blocks=pipeline.pipelined_blocks(STAGES, MICROBATCHES))


def test_bubble_fraction():
  assert pipeline.bubble_fraction(1, 1) == 0
  assert pipeline.bubble_fraction(2, 2) == 1 / 3
  assert pipeline.bubble_fraction(4, 8) == 3 / 11


@pytest.mark.parametrize("changes, message", [
    (dict(pipeline_stages=3), r"pipeline_stages=3: must divide model.num_layers=2"),
    (dict(pipeline_stages=2, pipeline_microbatches=3), r"pipeline_microbatches=3: batch_size=8 must split"),
    (dict(pipeline_microbatches=2), r"pipeline_microbatches=2: microbatches are a pipeline's"),
    (dict(pipeline_stages=0), r"pipeline_stages=0: must be an int >= 1"),
])
def test_bad_pipelines_are_refused(changes, message):
  with pytest.raises(ValueError, match=message):
    tiny_cpu(**changes)


def test_microbatches_must_split_over_the_data_devices_and_stages_over_the_devices():
  with pytest.raises(ValueError, match=r"pipeline_microbatches=4: .* over the 4 data-parallel devices"):
    trainer.make_run_mesh(tiny_cpu(pipeline_stages=2, pipeline_microbatches=4, mesh=(4, 1, 1), sharding="fsdp"))
  with pytest.raises(ValueError, match=r"3 pipeline stages do not split the 8 devices"):
    parallel.make_mesh((-1, 1, 1), stages=3)
  with pytest.raises(ValueError, match=r"mhc_recompute=4: .* the 1 blocks of each of 4 pipeline stages"):
    tiny_cpu(model=tiny_cpu().model.replace(num_layers=4, mhc_recompute=4), pipeline_stages=4)
