"""The small CPU trio, hc member (see mhc_jax/train/presets.py)."""

from mhc_jax.train.config import TrainConfig
from mhc_jax.train.presets import small_cpu


def get_config() -> TrainConfig:
  return small_cpu("hc")
