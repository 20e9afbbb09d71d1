"""Typed configuration of the decoder-only LM. Invalid values fail at construction, naming the field."""

from __future__ import annotations

import dataclasses

from mhc_jax.layers import CONNECTIONS, FIXABLE_MAPS, MHC_INITS, RES_PROJECTIONS, check_fixed_maps
from mhc_jax.ops.lite import check_streams as check_lite_streams
from mhc_jax.ops import GRAD_MODES, IMPLEMENTATIONS
from mhc_jax.validation import check_choice, check_int, check_number

DTYPES = ("float32", "bfloat16")
READOUTS = ("sum", "head")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer LM (RMSNorm, causal attention with RoPE, SwiGLU MLP).

  ``num_layers`` counts transformer blocks; each block has two sublayers (attention and
  MLP), each with its own connection, so there are ``2 * num_layers`` connections.
  """

  vocab_size: int = 256
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 4
  mlp_dim: int = 0  # 0: the SwiGLU default, 8/3 * d_model rounded up to a multiple of 64
  rope_theta: float = 10_000.0
  # The connection around every sublayer.
  connection: str = "mhc"  # "residual" | "hc" | "mhc"
  num_streams: int = 4
  sinkhorn_iters: int = 20
  sinkhorn_grad: str = "exact"  # "exact" | "autodiff" | "implicit"
  mhc_init: str = "paper"  # "paper" | "identity"
  mhc_alpha_init: float = 0.01
  # How mHC makes H_res doubly stochastic: "sinkhorn" (the paper) | "permutations" (mHC-lite,
  # docs/math.md §9: a softmax mixture of the num_streams! permutation matrices; num_streams <= 5).
  mhc_res_projection: str = "sinkhorn"
  hc_dynamic: bool = True
  # The mHC paper's ablation of HC's maps (docs/math.md §4), for "hc" and "mhc": the maps named
  # here ("pre", "post", "res") are fixed, H_pre = 1/num_streams (u = the mean of the streams),
  # H_post = 1, H_res = I; the others are learned. E.g. ("pre", "post"): only H_res is learned.
  fixed_maps: tuple[str, ...] = ()
  readout: str = "sum"  # how streams become one at the output: "sum" | "head"
  implementation: str = "auto"
  # Execution.
  dtype: str = "float32"  # activations and stream state; parameters are always fp32
  scan_layers: bool = True
  remat: bool = False  # rematerialize each whole block (F included) in the backward
  # mHC recomputation (docs/math.md §6): keep the stream state only at the start of every
  # segment of L_r consecutive sublayers and rebuild the connections' activations (maps,
  # Sinkhorn, pre and post) in the backward; the sublayers' matmul outputs are kept, so F's
  # matmuls never run twice. 0 (or "off"): off; an even L_r (whole blocks); "auto": the
  # L_r* = sqrt(n L / (n + 2)) that minimizes memory, rounded to whole blocks.
  mhc_recompute: int | str = 0

  def __post_init__(self):
    owner = "ModelConfig"
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_streams", "sinkhorn_iters"):
      check_int(name, getattr(self, name), 1, owner=owner)
    check_int("mlp_dim", self.mlp_dim, 0, owner=owner)  # 0 picks the SwiGLU default
    check_number("rope_theta", self.rope_theta, low_open=True, owner=owner)
    for name, choices in (("connection", CONNECTIONS), ("sinkhorn_grad", GRAD_MODES),
                          ("mhc_init", MHC_INITS), ("mhc_res_projection", RES_PROJECTIONS),
                          ("readout", READOUTS),
                          ("implementation", IMPLEMENTATIONS), ("dtype", DTYPES)):
      check_choice(name, getattr(self, name), choices, owner=owner)
    if self.d_model % self.num_heads:
      raise ValueError(f"ModelConfig.num_heads={self.num_heads}: must divide d_model={self.d_model}")
    if (self.d_model // self.num_heads) % 2:
      raise ValueError(f"ModelConfig.num_heads={self.num_heads}: head width d_model/num_heads="
                       f"{self.d_model // self.num_heads} must be even for RoPE")
    if not isinstance(self.fixed_maps, tuple):  # a list would make the config unhashable
      raise ValueError(f"ModelConfig.fixed_maps={self.fixed_maps!r}: must be a tuple of names "
                       f"from {FIXABLE_MAPS}")
    check_fixed_maps(self.fixed_maps, owner=owner)
    if self.fixed_maps and self.connection == "residual":
      raise ValueError(f"ModelConfig.fixed_maps={self.fixed_maps!r}: the residual connection has no "
                       "maps to fix; use connection='hc' or 'mhc'")
    if self.connection == "mhc" and self.mhc_res_projection == "permutations":
      check_lite_streams(self.num_streams, "ModelConfig.num_streams (mhc_res_projection='permutations')")
    self._check_recompute()
    if self.readout == "head" and self.connection == "residual":
      raise ValueError("ModelConfig.readout='head': a learned head needs streams; "
                       "use connection='hc' or 'mhc'")

  def _check_recompute(self) -> None:
    value = self.mhc_recompute
    if isinstance(value, str) and (value == "off" or value.isdigit()):
      object.__setattr__(self, "mhc_recompute", 0 if value == "off" else int(value))
      value = self.mhc_recompute
    if value != "auto":
      check_int("mhc_recompute", value, 0, owner="ModelConfig")
    if value and self.remat:
      raise ValueError(f"ModelConfig.mhc_recompute={value!r} with remat=True: remat already "
                       "recomputes whole blocks; choose one")
    self.recompute_blocks(1)

  def recompute_blocks(self, stages: int = 1) -> int:
    """Blocks per recomputation segment (0: off) when the blocks are split into ``stages``
    pipeline stages; a segment never crosses a stage. Raises if ``mhc_recompute`` does not fit."""
    value = self.mhc_recompute
    if not value:
      return 0
    per_stage = self.num_layers // stages
    divisors = [k for k in range(1, per_stage + 1) if per_stage % k == 0]
    if value == "auto":
      n, sublayers = self.streams, 2 * self.num_layers
      target = (n * sublayers / (n + 2)) ** 0.5 / 2  # in blocks of two sublayers
      return min(divisors, key=lambda k: (abs(k - target), k))
    if value % 2 or value // 2 not in divisors:
      where = f"the {per_stage} blocks of each of {stages} pipeline stages" if stages > 1 else \
          f"num_layers={self.num_layers} blocks"
      raise ValueError(f"ModelConfig.mhc_recompute={value}: segments are whole blocks of 2 sublayers "
                       f"that divide {where}; valid values: {[2 * k for k in divisors]} or 'auto'")
    return value // 2

  @property
  def streams(self) -> int:
    """Streams in the residual state: 1 for the residual baseline, else ``num_streams``."""
    return 1 if self.connection == "residual" else self.num_streams

  @property
  def hidden_dim(self) -> int:
    if self.mlp_dim:
      return self.mlp_dim
    return -(-(8 * self.d_model // 3) // 64) * 64

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)
