"""Propagation analysis: gains against a brute-force reference, doubly stochastic composites stay at
gain 1, convexity, map capture from a TransformerLM, and the plots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc_jax import analysis, layers, ops
from mhc_jax.models import ModelConfig, TransformerLM

TINY = ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=2, num_streams=4)
GAIN_KEYS = ("single_forward", "single_backward", "composite_forward", "composite_backward")


def _reference_gains(h_SxTxNxN, average: str) -> dict[str, np.ndarray]:
  """Loops over tokens and sublayers with explicit products: P_l = H_l ... H_0, Q_l = H_{S-1} ... H_l."""
  h = np.asarray(h_SxTxNxN, np.float64)
  if average == "matrices":
    h = h.mean(axis=1, keepdims=True)
  s, t, n, _ = h.shape
  fwd = lambda m: max(abs(sum(m[i, j] for j in range(n))) for i in range(n))
  bwd = lambda m: max(abs(sum(m[i, j] for i in range(n))) for j in range(n))
  out = {k: np.zeros((s, t)) for k in GAIN_KEYS}
  for tok in range(t):
    for l in range(s):
      p = np.eye(n)
      for k in range(l + 1):            # left-multiply by each later map: H_l (... (H_1 H_0))
        p = h[k, tok] @ p
      q = np.eye(n)
      for k in range(s - 1, l - 1, -1):  # right-multiply by each earlier map: ((H_{S-1} ...) H_l)
        q = q @ h[k, tok]
      out["single_forward"][l, tok] = fwd(h[l, tok])
      out["single_backward"][l, tok] = bwd(h[l, tok])
      out["composite_forward"][l, tok] = fwd(p)
      out["composite_backward"][l, tok] = bwd(q)
  return {k: v.mean(axis=1) for k, v in out.items()}


def _random_maps(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _doubly_stochastic(shape, seed=0):
  """Random convex mixtures of permutation matrices (exactly doubly stochastic): [..., N, N]."""
  rng = np.random.default_rng(seed)
  *lead, n, _ = shape
  perms = np.stack([np.eye(n)[rng.permutation(n)] for _ in range(6)])          # [6, N, N]
  weights = rng.dirichlet(np.ones(6), size=lead)                               # [..., 6]
  return np.einsum("...k,kij->...ij", weights, perms).astype(np.float32)


@pytest.mark.parametrize("average", ["tokens", "matrices"])
def test_gains_match_brute_force(average):
  h = _random_maps((5, 3, 4, 4), seed=1)
  got = analysis.amax_gains(h, average=average)
  want = _reference_gains(h, average)
  for k in GAIN_KEYS:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(got["max_composite_forward"], want["composite_forward"].max(), rtol=1e-5)
  np.testing.assert_allclose(got["max_composite_backward"], want["composite_backward"].max(), rtol=1e-5)


def test_gains_with_several_token_axes_average_them_all():
  h = _random_maps((3, 2, 3, 4, 4), seed=2)                                  # [S, B, L, N, N]
  flat = h.reshape(3, 6, 4, 4)
  for average in analysis.AVERAGES:
    got, want = analysis.amax_gains(h, average), _reference_gains(flat, average)
    for k in GAIN_KEYS:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{average} {k}")


def test_composites_order():
  a, b, c = _random_maps((3, 3, 3), seed=3)
  p, q = analysis.composites(np.stack([a, b, c]))
  for got, want in ((p[1], b @ a), (p[2], c @ b @ a), (q[0], c @ b @ a), (q[1], c @ b), (q[2], c)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gains_reject_non_square_maps_and_unknown_average():
  with pytest.raises(ValueError, match=r"\[S, \.\.\., N, N\]"):
    analysis.amax_gains(np.zeros((3, 4, 5)))
  with pytest.raises(ValueError, match="average='rows'"):
    analysis.amax_gains(np.zeros((3, 4, 4)), average="rows")


@pytest.mark.parametrize("source", ["permutations", "sinkhorn"])
def test_doubly_stochastic_composites_keep_gain_one(source):
  shape = (24, 3, 4, 4)
  if source == "permutations":
    h = _doubly_stochastic(shape, seed=4)
  else:
    h = ops.sinkhorn_knopp(jnp.asarray(_random_maps(shape, seed=4)), num_iters=200, eps=0.0)
  err = analysis.doubly_stochastic_error(h)
  assert float(jnp.max(err["row_error"])) < 1e-5 and float(jnp.max(err["column_error"])) < 1e-5
  assert float(jnp.min(err["min_entry"])) >= 0.0
  for average in analysis.AVERAGES:
    gains = analysis.amax_gains(h, average)
    for k in GAIN_KEYS:
      np.testing.assert_allclose(gains[k], 1.0, atol=1e-5, err_msg=f"{average} {k}")


def test_row_sums_above_one_grow_geometrically():
  rng = np.random.default_rng(5)
  s, n, growth = 10, 4, 1.3
  h = rng.uniform(0.1, 1.0, size=(s, 2, n, n))
  h = (growth * h / h.sum(axis=-1, keepdims=True)).astype(np.float32)  # every row sums to 1.3
  gains = analysis.amax_gains(h, "tokens")
  # With equal row sums, P_l 1 = growth^(l+1) 1 exactly.
  np.testing.assert_allclose(gains["composite_forward"], growth ** np.arange(1, s + 1), rtol=1e-5)
  want = _reference_gains(h, "tokens")
  np.testing.assert_allclose(gains["composite_backward"], want["composite_backward"], rtol=1e-5)
  assert gains["composite_backward"][0] > 10 * gains["composite_backward"][-1]


def test_gain_of_averaged_maps_is_at_most_mean_gain():
  h = _random_maps((6, 32, 4, 4), seed=6)
  averaged, per_token = analysis.amax_gains(h, "matrices"), analysis.amax_gains(h, "tokens")
  for k in ("single_forward", "single_backward"):
    assert bool(jnp.all(averaged[k] <= per_token[k] + 1e-6)), k
    assert float(jnp.max(per_token[k] - averaged[k])) > 0.1, k  # and here strictly, by far


def _tokens():
  return jax.random.randint(jax.random.PRNGKey(0), (2, 5), 0, TINY.vocab_size)


@pytest.fixture(scope="module")
def mhc_model():
  """One tiny mHC LM for the capture tests (each leaves it with capture off and no Intermediates)."""
  return TransformerLM(TINY, rngs=nnx.Rngs(0))


def test_capture_from_transformer_interleaves_attention_and_mlp(mhc_model):
  model = mhc_model
  maps = analysis.capture(model, _tokens())
  assert maps["h_res"].shape == (4, 2, 5, 4, 4)
  assert maps["h_pre"].shape == maps["h_post"].shape == (4, 2, 5, 4)
  assert not model.blocks.attn.capture_maps and not model.blocks.mlp.capture_maps
  assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))  # nothing left on the model

  model.set_attributes(capture_maps=True)
  model(_tokens())
  direct = nnx.pop(model, nnx.Intermediate)["connection_maps"].get_value()
  model.set_attributes(capture_maps=False)
  for name in ("h_pre", "h_post", "h_res"):
    order = [direct["attn"][name][0], direct["mlp"][name][0], direct["attn"][name][1], direct["mlp"][name][1]]
    np.testing.assert_allclose(maps[name], jnp.stack(order), rtol=1e-6, atol=1e-7, err_msg=name)
  assert not np.allclose(maps["h_res"][0], maps["h_res"][1])  # the four sublayers differ

  err = analysis.doubly_stochastic_error(maps["h_res"])
  assert float(jnp.max(err["row_error"])) < 1e-3 and float(jnp.max(err["column_error"])) < 1e-3
  assert float(jnp.min(err["min_entry"])) >= 0.0


def test_capture_keeps_earlier_intermediates_and_capture_flags(mhc_model):
  model = mhc_model
  model.set_attributes(capture_maps=True)
  model(_tokens())
  before = nnx.to_pure_dict(nnx.state(model, nnx.Intermediate))
  maps = analysis.capture(model, _tokens()[:1])
  assert maps["h_res"].shape == (4, 1, 5, 4, 4)
  assert model.blocks.attn.capture_maps and model.blocks.mlp.capture_maps
  after = nnx.to_pure_dict(nnx.pop(model, nnx.Intermediate))
  model.set_attributes(capture_maps=False)
  assert jax.tree.map(jnp.shape, after) == jax.tree.map(jnp.shape, before)  # B = 2 kept, not B = 1
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True):
    np.testing.assert_array_equal(a, b)


class HCStack(nnx.Module):
  """A generic model: ``depth`` linear sublayers, each in an HC connection, held in a list."""

  def __init__(self, depth: int, n: int = 4, c: int = 8):
    self.n = n
    self.layers = nnx.List([
        layers.HyperConnection(nnx.Linear(c, c, rngs=nnx.Rngs(i)), num_streams=n, features=c, layer_index=i)
        for i in range(depth)])

  def __call__(self, x_BxLxC):
    h = layers.expand_streams(x_BxLxC, self.n)
    for layer in self.layers:
      h = layer(h)
    return layers.reduce_streams(h)


def test_capture_from_a_generic_hc_model_in_list_order():
  depth = 12  # more than 10: list items come in index order, not in the order of their names
  model = HCStack(depth)
  # At init HC's H_res is exactly I; give its dynamic part some weight, as training does.
  for i, conn in enumerate(model.layers):
    conn.w[...] = jax.random.normal(jax.random.PRNGKey(i), conn.w[...].shape)
    conn.s_alpha[...] = jnp.asarray(0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
  maps = analysis.capture(model, x)
  assert maps["h_res"].shape == (depth, 2, 3, 4, 4) and maps["h_pre"].shape == (depth, 2, 3, 4)
  assert not any(conn.capture_maps for conn in model.layers)
  model.set_attributes(capture_maps=True)
  model(x)
  direct = jnp.stack([conn.h_res[...] for conn in model.layers])
  np.testing.assert_allclose(maps["h_res"], direct, rtol=1e-6, atol=1e-7)
  err = analysis.doubly_stochastic_error(maps["h_res"])
  assert float(jnp.max(err["row_error"])) > 0.1 and float(jnp.max(err["column_error"])) > 0.1


@pytest.mark.parametrize("changes", [dict(connection="residual"), dict(num_streams=1)])
def test_capture_needs_streams(changes):
  model = TransformerLM(TINY.replace(**changes), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="residual"):
    analysis.capture(model, _tokens())


def test_plots_write_pngs(tmp_path):
  rng = np.random.default_rng(7)
  hc = (np.eye(4) + 0.2 * rng.normal(size=(8, 4, 4))).astype(np.float32)
  mhc = _doubly_stochastic((8, 4, 4), seed=7)
  gains = {"HC": analysis.amax_gains(hc), "mHC": analysis.amax_gains(mhc)}
  paths = [analysis.plot_gains(gains, tmp_path / "gains.png"),
           analysis.plot_maps(hc, tmp_path / "sub" / "maps.png", sublayers=(0, 3, 7))]
  for path in paths:
    assert path.exists() and path.stat().st_size > 10_000, path
  with pytest.raises(ValueError, match=r"\[S, N, N\]"):
    analysis.plot_maps(hc[:, None], tmp_path / "bad.png")
