"""~125m-parameter mHC LM for one GPU node (d_model=768, 18 blocks, 12 heads); override
--config.model.connection=residual|hc for the baselines, --config.schedule=cosine for cosine decay."""

from mhc_jax.train.config import TrainConfig
from mhc_jax.train.presets import gpu


def get_config() -> TrainConfig:
  return gpu("mhc", d_model=768, num_layers=18, num_heads=12, learning_rate=6e-4)
