"""The H_pre / H_post / H_res ablation (``fixed_maps``): fixed maps take their fixed values
(1/n, 1, I), the others stay what the unablated layer computes, the update is the usual one built
from the maps used, the parameters feeding only a fixed map get zero gradient, errors name the value."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mhc_jax import layers, ops
from mhc_jax.models import ModelConfig, TransformerLM
from mhc_jax.train.config import TrainConfig, apply_overrides, parse_override_args

N, C = 3, 8
KINDS = ["hc", "mhc", "lite"]
FIXED = {"pre": lambda n: jnp.full((n,), 1.0 / n), "post": lambda n: jnp.ones((n,)),
         "res": lambda n: jnp.eye(n)}


class Branch(nnx.Module):
  """F(u) = W tanh(RMSNorm(u))."""

  def __init__(self, rngs):
    self.norm = nnx.RMSNorm(C, rngs=rngs)
    self.lin = nnx.Linear(C, C, rngs=rngs)

  def __call__(self, u):
    return self.lin(jnp.tanh(self.norm(u)))


def _connection(kind, fixed_maps=()):
  """A connection with non-trivial maps: HC's parameters are randomized, mHC's gates are large."""
  branch = Branch(nnx.Rngs(7))
  if kind == "hc":
    conn = layers.HyperConnection(branch, num_streams=N, features=C, fixed_maps=fixed_maps)
    rng = np.random.default_rng(1)  # numpy: eager jax.random calls compile, slowly on the CPU
    conn.w[...] = jnp.asarray(0.5 * rng.standard_normal((C, N + 2)), jnp.float32)
    conn.a_pre[...] = jnp.asarray(rng.uniform(size=N), jnp.float32)
    conn.b_post[...] = jnp.asarray(1.0 + 0.3 * rng.standard_normal(N), jnp.float32)
    conn.a_res[...] = jnp.asarray(np.eye(N) + 0.3 * rng.standard_normal((N, N)), jnp.float32)
    conn.s_alpha[...], conn.s_beta[...] = jnp.float32(0.5), jnp.float32(0.5)
    return conn
  projection = "permutations" if kind == "lite" else "sinkhorn"
  return layers.ManifoldHyperConnection(branch, num_streams=N, features=C, alpha_init=1.0,
                                        res_projection=projection, fixed_maps=fixed_maps,
                                        rngs=nnx.Rngs(3))


def _x():
  return jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, N, C)), jnp.float32)  # streams differ


def _run(conn, x):
  """The output and the maps the call used."""
  conn.capture_maps = True
  return _run_capturing(conn, x)


@nnx.jit
def _run_capturing(conn, x):
  out = conn(x)
  maps = nnx.to_pure_dict(nnx.pop(conn, nnx.Intermediate))
  return out, {k: v for k, v in maps.items() if k.startswith("h_")}


@nnx.jit
def _from_maps(conn, x, maps):
  """``mhc_post(x, F(mhc_pre(x, h_pre)), h_post, h_res)``: the update built from the maps."""
  y = conn.sublayer(ops.mhc_pre(x, maps["h_pre"]))
  return ops.mhc_post(x, y, maps["h_post"], maps["h_res"])


@pytest.mark.parametrize("kind", KINDS)
def test_all_maps_fixed_is_a_residual_on_the_stream_mean(kind):
  conn = _connection(kind, ("pre", "post", "res"))
  x = _x()
  out, _ = _run(conn, x)
  want = x + jax.jit(lambda x: conn.sublayer(jnp.mean(x, axis=-2)))(x)[..., None, :]
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind, fixed", [(kind, fixed) for kind in ("hc", "mhc") for fixed in FIXED]
                         + [("lite", "res")])
def test_one_fixed_map(kind, fixed):
  x = _x()
  conn = _connection(kind, (fixed,))
  out, maps = _run(conn, x)
  _, free_maps = _run(_connection(kind), x)  # the same parameters, nothing fixed
  name = f"h_{fixed}"
  np.testing.assert_array_equal(maps[name], jnp.broadcast_to(FIXED[fixed](N), maps[name].shape))
  assert not np.allclose(free_maps[name], maps[name], atol=1e-3)  # the ablation changes something
  for other in set(maps) - {name}:  # the maps not fixed are the unablated layer's
    np.testing.assert_allclose(maps[other], free_maps[other], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out, _from_maps(conn, x, maps), rtol=1e-5, atol=1e-5)


def test_one_stream_ignores_fixed_maps():
  x = _x()[..., :1, :]
  conn = layers.HyperConnection(Branch(nnx.Rngs(7)), num_streams=1, features=C, fixed_maps=("pre", "res"))
  out, want = jax.jit(lambda x: (conn(x), x + conn.sublayer(x)))(x)
  np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("fixed_maps, match", [
    (("pre", "bad"), r"fixed_maps=\('pre', 'bad'\): 'bad' is not a map"),
    (("res", "res"), r"fixed_maps=\('res', 'res'\): names a map twice"),
    ("res", r"fixed_maps='res': must be a tuple"),
])
@pytest.mark.parametrize("cls", [layers.HyperConnection, layers.ManifoldHyperConnection])
def test_bad_fixed_maps_in_the_layers(cls, fixed_maps, match):
  with pytest.raises(ValueError, match=match):
    cls(Branch(nnx.Rngs(0)), num_streams=N, features=C, fixed_maps=fixed_maps, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("change, match", [
    (dict(fixed_maps=("post", "H_res")), r"ModelConfig.fixed_maps=\('post', 'H_res'\): 'H_res' is not a map"),
    (dict(fixed_maps=("pre", "pre")), r"ModelConfig.fixed_maps=.*twice"),
    (dict(fixed_maps=["res"]), r"ModelConfig.fixed_maps=\['res'\]: must be a tuple"),
    (dict(fixed_maps=("res",), connection="residual"), r"ModelConfig.fixed_maps=\('res',\): the residual"),
])
def test_bad_fixed_maps_in_the_model_config(change, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig(**change)


def test_override_and_json_round_trip():
  argv = ['--config.model.fixed_maps=("pre","post")', "--config.model.connection=hc"]
  overrides = parse_override_args(argv)  # the shell passes ("pre","post") with its quotes
  cfg = apply_overrides(TrainConfig(), overrides)
  assert cfg.model.fixed_maps == ("pre", "post")
  assert apply_overrides(TrainConfig(), {"model.fixed_maps": "res"}).model.fixed_maps == ("res",)
  assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def _only_fixed_and_others(kind, grads, fixed_maps):
  """The gradients of the parameters (or columns) that feed only the fixed maps, and of the others."""
  if kind == "hc":  # w = [w_pre | w_post | W_res]; a_pre, b_post, a_res; s_beta gates only H_post
    w = grads["w"][...]
    per_map = {"pre": [w[..., :1], grads["a_pre"][...]],
               "post": [w[..., 1:2], grads["b_post"][...], grads["s_beta"][...]],
               "res": [w[..., 2:], grads["a_res"][...]]}
  else:  # phi's and bias's columns [pre (n) | post (n) | res], alpha = (pre, post, res)
    phi, bias, alpha = grads["phi"][...], grads["bias"][...], grads["alpha"][...]
    parts = {"pre": slice(0, N), "post": slice(N, 2 * N), "res": slice(2 * N, None)}
    per_map = {m: [phi[..., p], bias[..., p], alpha[..., i]] for i, (m, p) in enumerate(parts.items())}
  fixed = [a for m in fixed_maps for a in per_map[m]]
  others = [a for m in per_map if m not in fixed_maps for a in per_map[m]]
  return fixed, others


@pytest.mark.parametrize("kind, fixed_maps", [("hc", ("pre", "post")), ("mhc", ("res",)),
                                               ("mhc", ("pre", "post")), ("lite", ("res",))])
def test_parameters_of_fixed_maps_get_zero_gradient(kind, fixed_maps):
  conn = _connection(kind, fixed_maps)
  x = _x()
  grads = nnx.jit(nnx.grad(lambda conn: jnp.sum(jnp.sin(conn(x)))))(conn)
  fixed, others = _only_fixed_and_others(kind, grads, fixed_maps)
  for a in fixed:
    assert float(jnp.max(jnp.abs(a))) == 0.0
  for a in others:
    assert float(jnp.max(jnp.abs(a))) > 0.0


def test_lm_with_fixed_res_has_finite_gradients_and_none_for_h_res():
  # Every weight 16 wide: few distinct shapes, so few initializer compilations.
  cfg = ModelConfig(vocab_size=16, num_layers=1, d_model=16, num_heads=2, mlp_dim=16, num_streams=N,
                    connection="hc", fixed_maps=("res",), scan_layers=False)
  model = TransformerLM(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)

  def loss(model):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  grads = nnx.jit(nnx.grad(loss))(model)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(grads))
  for sub in ("attn", "mlp"):
    fixed, _ = _only_fixed_and_others("hc", grads["blocks"][sub], ("res",))
    for a in fixed:  # W_res and a_res
      assert float(jnp.max(jnp.abs(a))) == 0.0
    # w_pre and w_post learn (the gates do not yet: at init w = 0, so tanh(x w) = 0 is all they scale).
    assert bool(jnp.all(jnp.any(grads["blocks"][sub]["w"][...][..., :2] != 0, axis=-2)))
