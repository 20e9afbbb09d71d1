"""~350m-parameter mHC LM for one GPU node (d_model=1024, 28 blocks, 16 heads); override
--config.model.connection=residual|hc for the baselines, --config.schedule=cosine for cosine decay."""

from mhc_jax.train.config import TrainConfig
from mhc_jax.train.presets import gpu


def get_config() -> TrainConfig:
  return gpu("mhc", d_model=1024, num_layers=28, num_heads=16, learning_rate=3e-4)
