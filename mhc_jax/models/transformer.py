"""Decoder-only transformer LM whose residual stream is a residual, HC or mHC connection.

Blocks are created stacked (one leading layer axis on every parameter) and applied with
``lax.scan`` (``scan_layers=True``) or an unrolled Python loop over the same parameters;
both give the same numbers. ``remat=True`` wraps each block in ``jax.checkpoint``;
``mhc_recompute`` checkpoints segments of blocks, keeping the matmul outputs. Every
parameter carries logical axis names (``logical_axes`` metadata, :mod:`mhc_jax.parallel.rules`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from mhc_jax.layers import BRANCH_OUTPUT, StreamHead, expand_streams, make_connection, reduce_streams
from mhc_jax.models.config import ModelConfig


def rope(x_BxLxHxD: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding over the sequence axis (pairs (i, i + D/2))."""
  _, length, _, d = x_BxLxHxD.shape
  inv_freq = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
  angles_LxD2 = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  sin, cos = jnp.sin(angles_LxD2)[:, None, :], jnp.cos(angles_LxD2)[:, None, :]
  x1, x2 = jnp.split(x_BxLxHxD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxD.dtype)


def _named(module: nnx.Module, attribute: str, *names) -> nnx.Module:
  """Sets the logical axis names (see :mod:`mhc_jax.parallel.rules`) of ``module.<attribute>``."""
  getattr(module, attribute).set_metadata(logical_axes=names)
  return module


def _dense(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs, std: float, names) -> nnx.Linear:
  linear = nnx.Linear(d_in, d_out, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                      kernel_init=nnx.initializers.normal(std), rngs=rngs)
  return _named(linear, "kernel", *names)


def _norm(c: int, rngs: nnx.Rngs, dtype=None) -> nnx.RMSNorm:
  return _named(nnx.RMSNorm(c, dtype=dtype, rngs=rngs), "scale", "norm")


class Attention(nnx.Module):
  """Pre-normed causal multi-head self-attention with RoPE: ``F(u) = Attn(RMSNorm(u))``."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    c = cfg.d_model
    self.num_heads, self.rope_theta = cfg.num_heads, cfg.rope_theta
    self.norm = _norm(c, rngs, jnp.dtype(cfg.dtype))
    self.qkv = _dense(cfg, c, 3 * c, rngs, c ** -0.5, ("embed", "heads"))
    self.out = _dense(cfg, c, c, rngs, (2 * cfg.num_layers * c) ** -0.5, ("heads", "embed"))

  def __call__(self, u_TxC: jax.Array, *, seq_len: int) -> jax.Array:
    """``u_TxC`` holds ``T = B * seq_len`` tokens, sequence-major."""
    t, c = u_TxC.shape
    h = self.num_heads
    qkv = self.qkv(self.norm(u_TxC)).reshape(t // seq_len, seq_len, 3, h, c // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = rope(q, self.rope_theta), rope(k, self.rope_theta)
    o_BxLxHxD = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(o_BxLxHxD.reshape(t, c))


class MLP(nnx.Module):
  """Pre-normed SwiGLU MLP: ``F(u) = W2 (silu(W1 n) * W3 n)`` with ``n = RMSNorm(u)``."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    c, f = cfg.d_model, cfg.hidden_dim
    self.norm = _norm(c, rngs, jnp.dtype(cfg.dtype))
    self.gate = _dense(cfg, c, f, rngs, c ** -0.5, ("embed", "mlp"))
    self.up = _dense(cfg, c, f, rngs, c ** -0.5, ("embed", "mlp"))
    self.down = _dense(cfg, f, c, rngs, (2 * cfg.num_layers * f) ** -0.5, ("mlp", "embed"))

  def __call__(self, u_TxC: jax.Array) -> jax.Array:
    n = self.norm(u_TxC)
    return self.down(jax.nn.silu(self.gate(n)) * self.up(n))


class Block(nnx.Module):
  """One transformer block: attention and MLP sublayers, each inside its own connection."""

  def __init__(self, cfg: ModelConfig, layer_index, rngs: nnx.Rngs):
    kwargs = {}
    if cfg.connection == "mhc":
      kwargs = dict(num_iters=cfg.sinkhorn_iters, sinkhorn_grad=cfg.sinkhorn_grad,
                    init=cfg.mhc_init, alpha_init=cfg.mhc_alpha_init,
                    res_projection=cfg.mhc_res_projection, implementation=cfg.implementation)
    elif cfg.connection == "hc":
      kwargs = dict(dynamic=cfg.hc_dynamic, implementation=cfg.implementation)
    if cfg.connection != "residual":
      kwargs["fixed_maps"] = cfg.fixed_maps
    common = dict(num_streams=cfg.num_streams, features=cfg.d_model, rngs=rngs, **kwargs)
    self.attn = make_connection(cfg.connection, Attention(cfg, rngs), layer_index=2 * layer_index,
                                **common)
    self.mlp = make_connection(cfg.connection, MLP(cfg, rngs), layer_index=2 * layer_index + 1,
                               **common)

  def __call__(self, x, *, seq_len: int):
    return self.mlp(self.attn(x, seq_len=seq_len))


class TransformerLM(nnx.Module):
  """Decoder-only LM: ``tokens [B, L] -> logits [B, L, V]`` (fp32).

  The residual state is ``[B, L, C]`` for the residual baseline and ``[B, L, N, C]`` for
  HC and mHC: the embedding is copied into the N streams, and at the output the streams
  are summed (``readout="sum"``) or mixed by a learned :class:`StreamHead` before the final
  norm. When connections have ``capture_maps`` set (``model.set_attributes(capture_maps=True)``),
  a call keeps the per-token maps of every sublayer, stacked over blocks, as
  ``nnx.Intermediate`` state ``connection_maps``: ``{"attn"|"mlp": {"h_pre"|"h_post"|"h_res": array}}``
  with a leading block axis (read it with ``nnx.pop(model, nnx.Intermediate)``).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.embed = _named(nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype,
                                  embedding_init=nnx.initializers.normal(1.0), rngs=rngs),
                        "embedding", "vocab", "embed")

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0, 0), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: None, "logical_axes": "layers"})
    def make_blocks(rngs, layer_index):
      return Block(cfg, layer_index, rngs)

    self.blocks = make_blocks(rngs, jnp.arange(cfg.num_layers))
    self.head = StreamHead(cfg.num_streams, cfg.d_model, rngs=rngs) if cfg.readout == "head" else None
    self.final_norm = _norm(cfg.d_model, rngs)
    self.unembed = _named(nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                                     kernel_init=nnx.initializers.normal(cfg.d_model ** -0.5), rngs=rngs),
                          "kernel", "embed", "vocab")

  def __call__(self, tokens_BxL: jax.Array, *, blocks=None) -> jax.Array:
    """``blocks(graphdef, state, x, cfg, seq_len=...) -> (x, maps)`` applies the stacked blocks
    (default :func:`apply_blocks`; a pipeline gives its own, :mod:`mhc_jax.parallel.pipeline`)."""
    if tokens_BxL.ndim != 2 or not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):
      raise ValueError(f"tokens must be an int array [B, L], got {tokens_BxL.dtype}{list(tokens_BxL.shape)}")
    return self.logits_from_embeddings(self.embed(tokens_BxL), blocks=blocks)

  def logits_from_embeddings(self, h_BxLxC: jax.Array, *, blocks=None) -> jax.Array:
    """Everything after the embedding lookup (useful for gradients w.r.t. the inputs)."""
    cfg = self.cfg
    b, length, c = h_BxLxC.shape
    # Tokens are flattened to T = B * L for the whole stack: on CPU, the weight-gradient dots
    # of [T, C] activations are markedly faster than those of [B, L, C] ones.
    x = h_BxLxC.reshape(b * length, c).astype(jnp.dtype(cfg.dtype))
    if cfg.connection != "residual":
      x = expand_streams(x, cfg.num_streams)
    x = self._apply_blocks(x, length, blocks or apply_blocks)
    if cfg.connection != "residual":
      x = self.head(x) if self.head is not None else reduce_streams(x)
    return self.unembed(self.final_norm(x.astype(jnp.float32))).reshape(b, length, -1)

  def _apply_blocks(self, x, seq_len: int, blocks):
    graphdef, state = nnx.split(self.blocks)
    x, maps = blocks(graphdef, state, x, self.cfg, seq_len=seq_len)
    if jax.tree.leaves(maps):  # [layers, T, ...] -> [layers, B, L, ...]
      unflatten = lambda a: a.reshape(a.shape[:1] + (-1, seq_len) + a.shape[2:])
      self.connection_maps = nnx.Intermediate(jax.tree.map(unflatten, maps))
    return x


RECOMPUTE_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_saveable, jax.checkpoint_policies.save_only_these_names(BRANCH_OUTPUT))
"""What a recomputation segment keeps besides its input: every matmul output and every sublayer
output, so the sublayers' matmuls never run twice; the rest (the connections' maps, Sinkhorn,
pre and post, and the sublayers' cheap norms and activations) is rebuilt in the backward."""


def apply_blocks(graphdef, state, x, cfg: ModelConfig, *, seq_len: int, stages: int = 1):
  """Applies the stacked blocks ``state`` (leading axis: blocks) to the stream state ``x`` in order.

  Returns ``(x, maps)``, ``maps`` holding each block's captured connection maps stacked over
  blocks. With ``cfg.mhc_recompute``, the blocks run in checkpointed segments of
  ``cfg.recompute_blocks(stages)`` blocks (``stages``: pipeline stages, each applying its own
  ``state``).
  """
  def body(x, block_state):
    block = nnx.merge(graphdef, block_state)
    x = block(x, seq_len=seq_len)
    return x, nnx.to_pure_dict(nnx.pop(block, nnx.Intermediate))

  def run(fn, x, stacked, scan=cfg.scan_layers):
    if scan:
      return lax.scan(fn, x, stacked)
    per_layer = []
    for i in range(jax.tree.leaves(stacked)[0].shape[0]):
      x, m = fn(x, jax.tree.map(lambda a: a[i], stacked))
      per_layer.append(m)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *per_layer)

  if cfg.remat:
    body = jax.checkpoint(body)
  k = cfg.recompute_blocks(stages)
  if not k:
    return run(body, x, state)
  segments = jax.tree.map(lambda a: a.reshape((-1, k) + a.shape[1:]), state)
  # A segment's blocks are unrolled: a scan inside the checkpoint would keep its carry (the
  # stream state) at every step, which is what recomputation is meant to drop.
  segment = jax.checkpoint(lambda x, s: run(body, x, s, scan=False), policy=RECOMPUTE_POLICY)
  x, maps = run(segment, x, segments)
  return x, jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), maps)
