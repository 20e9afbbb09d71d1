"""Decoder-only transformer LM whose residual stream is a residual, HC or mHC connection."""

from mhc_jax.models.config import ModelConfig
from mhc_jax.models.transformer import MLP, Attention, Block, TransformerLM, rope

__all__ = ["MLP", "Attention", "Block", "ModelConfig", "TransformerLM", "rope"]
