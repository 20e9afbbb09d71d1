"""Typed configuration of the decoder-only LM. Invalid values fail at construction, naming the field."""

from __future__ import annotations

import dataclasses

from mhc_jax.layers import CONNECTIONS, MHC_INITS
from mhc_jax.ops import GRAD_MODES, IMPLEMENTATIONS

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
  hc_dynamic: bool = True
  readout: str = "sum"  # how streams become one at the output: "sum" | "head"
  implementation: str = "auto"
  # Execution.
  dtype: str = "float32"  # activations and stream state; parameters are always fp32
  scan_layers: bool = True
  remat: bool = False

  def __post_init__(self):
    def fail(name, why):
      raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: {why}")

    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_streams", "sinkhorn_iters"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(name, "must be an int >= 1")
    if isinstance(self.mlp_dim, bool) or not isinstance(self.mlp_dim, int) or self.mlp_dim < 0:
      fail("mlp_dim", "must be an int >= 0 (0 picks the SwiGLU default)")
    if self.d_model % self.num_heads:
      fail("num_heads", f"must divide d_model={self.d_model}")
    if (self.d_model // self.num_heads) % 2:
      fail("num_heads", f"head width d_model/num_heads={self.d_model // self.num_heads} must be even for RoPE")
    if self.rope_theta <= 0:
      fail("rope_theta", "must be > 0")
    for name, choices in (("connection", CONNECTIONS), ("sinkhorn_grad", GRAD_MODES),
                          ("mhc_init", MHC_INITS), ("readout", READOUTS),
                          ("implementation", IMPLEMENTATIONS), ("dtype", DTYPES)):
      if getattr(self, name) not in choices:
        fail(name, f"must be one of {choices}")
    if self.readout == "head" and self.connection == "residual":
      fail("readout", "a learned head needs streams; use connection='hc' or 'mhc'")

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
