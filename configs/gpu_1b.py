"""~1b-parameter mHC LM for one GPU node (d_model=2048, 20 blocks, 16 heads); override
--config.model.connection=residual|hc for the baselines, --config.schedule=cosine for cosine decay."""

from mhc_jax.train.config import TrainConfig
from mhc_jax.train.presets import gpu


def get_config() -> TrainConfig:
  return gpu("mhc", d_model=2048, num_layers=20, num_heads=16, learning_rate=2e-4)
