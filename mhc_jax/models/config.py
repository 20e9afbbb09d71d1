"""Typed configuration of the decoder-only LM. Invalid values fail at construction, naming the field."""

from __future__ import annotations

import dataclasses

from mhc_jax.layers import CONNECTIONS, MHC_INITS
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
  hc_dynamic: bool = True
  readout: str = "sum"  # how streams become one at the output: "sum" | "head"
  implementation: str = "auto"
  # Execution.
  dtype: str = "float32"  # activations and stream state; parameters are always fp32
  scan_layers: bool = True
  remat: bool = False

  def __post_init__(self):
    owner = "ModelConfig"
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_streams", "sinkhorn_iters"):
      check_int(name, getattr(self, name), 1, owner=owner)
    check_int("mlp_dim", self.mlp_dim, 0, owner=owner)  # 0 picks the SwiGLU default
    check_number("rope_theta", self.rope_theta, low_open=True, owner=owner)
    for name, choices in (("connection", CONNECTIONS), ("sinkhorn_grad", GRAD_MODES),
                          ("mhc_init", MHC_INITS), ("readout", READOUTS),
                          ("implementation", IMPLEMENTATIONS), ("dtype", DTYPES)):
      check_choice(name, getattr(self, name), choices, owner=owner)
    if self.d_model % self.num_heads:
      raise ValueError(f"ModelConfig.num_heads={self.num_heads}: must divide d_model={self.d_model}")
    if (self.d_model // self.num_heads) % 2:
      raise ValueError(f"ModelConfig.num_heads={self.num_heads}: head width d_model/num_heads="
                       f"{self.d_model // self.num_heads} must be even for RoPE")
    if self.readout == "head" and self.connection == "residual":
      raise ValueError("ModelConfig.readout='head': a learned head needs streams; "
                       "use connection='hc' or 'mhc'")

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
