"""The LM: causal through gradients, scan == unrolled, remat on == off, bf16 grads finite, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mhc_jax.models import ModelConfig, TransformerLM

TINY = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=2, num_streams=4)
CONNECTIONS = ["residual", "hc", "mhc"]


def _tokens(shape=(2, 12), seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, TINY.vocab_size)


def _loss(model, tokens):
  logits = model(tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_causal_through_gradients(connection):
  model = TransformerLM(TINY.replace(connection=connection), rngs=nnx.Rngs(0))
  h = model.embed(_tokens())
  t = 5
  grad = jax.grad(lambda h: jnp.sum(model.logits_from_embeddings(h)[:, t] ** 2))(h)
  assert float(jnp.max(jnp.abs(grad[:, t + 1:]))) == 0.0  # nothing flows from the future
  assert bool(jnp.all(jnp.any(grad[:, : t + 1] != 0, axis=-1)))  # everything flows from the past


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_scan_unrolled_remat_and_recompute_give_the_same_numbers(connection):
  cfg = TINY.replace(connection=connection)
  tokens = _tokens()
  loss_a, grads_a = nnx.value_and_grad(_loss)(TransformerLM(cfg, rngs=nnx.Rngs(0)), tokens)
  for change in (dict(scan_layers=False), dict(remat=True), dict(mhc_recompute="auto")):
    loss_b, grads_b = nnx.value_and_grad(_loss)(TransformerLM(cfg.replace(**change), rngs=nnx.Rngs(0)), tokens)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6, err_msg=str(change))
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=str(change))


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_bf16_gradients_are_finite(connection):
  model = TransformerLM(TINY.replace(connection=connection, dtype="bfloat16"), rngs=nnx.Rngs(0))
  loss, grads = nnx.value_and_grad(_loss)(model, _tokens())
  assert np.isfinite(float(loss))
  leaves = jax.tree.leaves(grads)
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert all(g.dtype == jnp.float32 for g in leaves)  # parameters (and so grads) are fp32


def test_mhc_lm_learns_a_copy_task():
  model = TransformerLM(TINY, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  pattern = jnp.tile(jnp.arange(6), 4)[None].repeat(4, 0)

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(_loss)(model, pattern)
    opt.update(model, grads)
    return loss

  first = float(step(model, opt))
  for _ in range(60):
    last = float(step(model, opt))
  assert last < 0.25 * first


def test_head_readout_and_captured_maps():
  model = TransformerLM(TINY.replace(readout="head"), rngs=nnx.Rngs(0))
  model.set_attributes(capture_maps=True)
  logits = model(_tokens())
  assert logits.shape == (2, 12, TINY.vocab_size) and logits.dtype == jnp.float32
  maps = nnx.pop(model, nnx.Intermediate)["connection_maps"].get_value()
  assert maps["attn"]["h_res"].shape == (TINY.num_layers, 2, 12, 4, 4)
  np.testing.assert_allclose(maps["mlp"]["h_res"].sum(-1), 1.0, atol=1e-5)


def test_hc_reads_one_hot_stream_per_sublayer():
  model = TransformerLM(TINY.replace(connection="hc", num_layers=3), rngs=nnx.Rngs(0))
  a_pre = model.blocks.attn.a_pre[...]  # sublayer 2l reads stream (2l mod N)
  np.testing.assert_array_equal(a_pre, np.eye(4)[[0, 2, 0]])
  np.testing.assert_array_equal(model.blocks.mlp.a_pre[...], np.eye(4)[[1, 3, 1]])


@pytest.mark.parametrize("changes, match", [
    (dict(num_heads=3), "ModelConfig.num_heads=3: must divide d_model=32"),
    (dict(num_streams=0), "ModelConfig.num_streams=0"),
    (dict(connection="dense"), "ModelConfig.connection='dense'"),
    (dict(sinkhorn_iters=0), "ModelConfig.sinkhorn_iters=0"),
    (dict(sinkhorn_grad="fast"), "ModelConfig.sinkhorn_grad='fast'"),
    (dict(dtype="float16"), "ModelConfig.dtype='float16'"),
    (dict(connection="residual", readout="head"), "ModelConfig.readout='head'"),
])
def test_config_errors_name_the_field(changes, match):
  with pytest.raises(ValueError, match=match):
    TINY.replace(**changes)


def test_tokens_must_be_int_batch():
  model = TransformerLM(TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="int array"):
    model(jnp.zeros((2, 4)))
